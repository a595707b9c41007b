"""lmforge `Engine` vs `transformers` ``generate``: decoding speed on identical weights (CPU).

Both models come from one lmforge preset (``5m``, ``30m``): lmforge builds it with a fixed
seed, `save_model` exports it and HF loads that folder (SDPA attention), fp32.

* **decode**: one request, a 32-token prompt, ``--decode-tokens`` greedy tokens (HF with
  ``min_new_tokens`` = ``max_new_tokens``, lmforge with ``ignore_eos``, so both emit the same
  count; the outputs are checked to be identical). Rounds alternate the libraries; medians.
* **batch**: 32 requests with prompt lengths uniform in 8–256 and output lengths in 16–256
  (seeded). lmforge runs them through continuous batching; HF runs one padded batched
  ``generate`` of the longest output length (static batching has no per-row lengths, so
  every row runs as long as the longest — that is what padded batching costs). Throughput
  counts the requested tokens only (prompt + output of every request) for both.

``--profile`` adds a torch.profiler breakdown of the engine's decode steps, batch 1 and 32
rows: GEMMs, attention + KV cache traffic, other ops, and time outside aten ops (Python).

Timing: 1 torch thread and process CPU time by default. On an idle machine that equals the
wall time; on a shared one (this 2-core box runs other jobs) wall time mostly measures
waiting for a core, and two threads each wait on the other at every parallel op, which
swamps any difference between the libraries. ``--threads 0 --clock wall`` for the plain
measurement on an idle machine.

    python bench/generate.py [--sizes 5m 30m] [--rounds 3] [--decode-tokens 128] [--profile] [--no-spec]

Last line: ``RESULT generate decode_ratio=<x> batch_ratio=<y> spec_speedup=<z>`` (lmforge ÷
HF tokens/s, geometric mean over sizes; ``spec_speedup`` from `bench/speculative.py`'s
``run_spec_bench``: speculative over plain decoding with the same loop — skip it with
``--no-spec``). Functions appended to `EXTRA_BENCHES` each return ``{name: value}`` pairs
added to that line.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lmforge
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.presets import preset_config

EXTRA_BENCHES: list[Callable[[], dict[str, float]]] = []


def load_pair(name: str):
    """(lmforge model, HF model) with identical weights, both in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ours = lmforge.CausalLM(preset_config(name)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        lmforge.save_model(ours, tmp)
        hf = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    return ours, hf


CLOCK = time.process_time  # see --clock


def _timed(fn) -> tuple[float, object]:
    start = CLOCK()
    out = fn()
    return CLOCK() - start, out


def bench_decode(ours, hf, new_tokens: int, rounds: int) -> dict:
    prompt = torch.randint(
        0, ours.config.vocab_size, (32,), generator=torch.Generator().manual_seed(1)
    )
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    ids = prompt[None]

    def run_ours():
        return Engine(ours, max_num_seqs=1).generate([prompt.tolist()], params)[0].token_ids

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(
                ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return out[0, 32:].tolist()

    same = run_ours() == run_hf()  # also warms both up
    t_ours, t_hf = [], []
    for _ in range(rounds):
        t_ours.append(_timed(run_ours)[0])
        t_hf.append(_timed(run_hf)[0])
    ours_tps = new_tokens / statistics.median(t_ours)
    hf_tps = new_tokens / statistics.median(t_hf)
    return dict(ours=ours_tps, hf=hf_tps, ratio=ours_tps / hf_tps, identical=same)


def mixed_requests(vocab: int, n: int = 32, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(8, 256))] for _ in range(n)]
    outputs = [rng.randint(16, 256) for _ in range(n)]
    return prompts, outputs


def bench_batch(ours, hf, rounds: int, num_requests: int = 32) -> dict:
    prompts, lengths = mixed_requests(ours.config.vocab_size, num_requests)
    useful = sum(len(p) for p in prompts) + sum(lengths)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    longest = max(lengths)

    def run_ours():
        return Engine(ours).generate(prompts, params)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
                pad_token_id=0,
            )

    t_ours, t_hf = [], []
    for _ in range(rounds):
        t, outs = _timed(run_ours)
        t_ours.append(t)
        t_hf.append(_timed(run_hf)[0])
    assert [len(o.token_ids) for o in outs] == lengths
    ours_tps = useful / statistics.median(t_ours)
    hf_tps = useful / statistics.median(t_hf)
    return dict(ours=ours_tps, hf=hf_tps, ratio=ours_tps / hf_tps, tokens=useful)


def _split_profile(prof, wall: float, steps: int) -> dict:
    """Shares of the wall time: GEMMs (aten::mm/addmm), attention (SDPA + KV cache
    gathers/writes), all other aten ops, and the rest — time outside aten ops: the engine's
    and scheduler's Python, module calls, tensor creation (profiler overhead inflates it)."""
    events = prof.key_averages()
    self_ms = lambda keys: sum(e.self_cpu_time_total for e in events if keys(e.key)) / 1e3  # noqa: E731
    gemm = self_ms(lambda k: k in ("aten::mm", "aten::addmm"))
    attention = self_ms(
        lambda k: (
            "scaled_dot_product" in k
            or k in ("aten::index_select", "aten::index_copy_", "aten::index_fill_")
        )
    )
    aten = self_ms(lambda k: k.startswith("aten::"))
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    wall_ms = 1e3 * wall
    return dict(
        ms_per_step=wall_ms / steps,
        gemm=gemm / wall_ms,
        attention=attention / wall_ms,
        other_ops=(aten - gemm - attention) / wall_ms,
        outside_ops=max(0.0, 1 - aten / wall_ms),
        aten_ops_per_step=ops / steps,
    )


def profile_decode(ours, new_tokens: int = 64, batch: int = 1) -> dict:
    """Where the time of ``new_tokens`` engine decode steps goes, ``batch`` requests of a
    32-token prompt decoding together (the prefill step is excluded)."""
    from torch.profiler import ProfilerActivity, profile

    prompts = [[(7 * i + j) % 1000 + 1 for j in range(32)] for i in range(batch)]
    params = SamplingParams(max_tokens=new_tokens + 1, temperature=0, ignore_eos=True)
    engine = Engine(ours, max_num_seqs=batch)
    engine.generate(prompts, params)  # warm-up
    for p in prompts:
        engine.add_request(p, params)
    engine.step()  # prefill
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()  # the profiler's op times are wall times too
        while engine.has_unfinished():
            engine.step()
        wall = time.perf_counter() - start
    return _split_profile(prof, wall, new_tokens)


def _print_profile(name: str, label: str, p: dict) -> None:
    print(
        f"{name} engine {label} profile: {p['ms_per_step']:.2f} ms/step (wall, profiled), GEMM "
        f"{100 * p['gemm']:.0f}%, attention + KV cache {100 * p['attention']:.0f}%, other ops "
        f"{100 * p['other_ops']:.0f}%, outside aten ops (Python) {100 * p['outside_ops']:.0f}%,"
        f" {p['aten_ops_per_step']:.0f} aten ops/step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["5m", "30m"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-rounds", type=int, default=1)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: process CPU time (with 1 thread, the wall time of an idle machine, without "
        "the waits for a core that other jobs cause on a shared one); wall: elapsed time",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests in the batch part")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-spec", action="store_true", help="skip speculative decoding (bench/speculative.py)"
    )
    args = parser.parse_args()
    if not args.no_spec:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from speculative import run_spec_bench  # bench/speculative.py

        EXTRA_BENCHES.append(lambda: {"spec_speedup": run_spec_bench()["spec_speedup"]})
    started = time.perf_counter()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    decode, batch = [], []
    for name in args.sizes:
        ours, hf = load_pair(name)
        d = bench_decode(ours, hf, args.decode_tokens, args.rounds)
        print(
            f"{name} decode (batch 1): lmforge {d['ours']:.1f} tok/s, HF {d['hf']:.1f} tok/s, "
            f"ratio {d['ratio']:.2f}, identical tokens: {d['identical']}"
        )
        b = bench_batch(ours, hf, args.batch_rounds, args.requests)
        print(
            f"{name} batch ({args.requests} mixed requests, {b['tokens']} tokens): lmforge "
            f"{b['ours']:.1f} tok/s, HF {b['hf']:.1f} tok/s, ratio {b['ratio']:.2f}"
        )
        if args.profile:
            _print_profile(name, "batch-1 decode", profile_decode(ours))
            _print_profile(name, "32-row decode", profile_decode(ours, 32, batch=32))
        decode.append(d["ratio"])
        batch.append(b["ratio"])
    parts = {"decode_ratio": _geomean(decode), "batch_ratio": _geomean(batch)}
    for extra in EXTRA_BENCHES:
        parts.update(extra())
    print(f"bench time {time.perf_counter() - started:.0f} s")
    print("RESULT generate " + " ".join(f"{k}={v:.3f}" for k, v in parts.items()))


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


if __name__ == "__main__":
    main()
