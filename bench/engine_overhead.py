"""The engine's host overhead per decode step: everything a step costs beyond the model call.

A decode step of `lmforge.infer.Engine` is the runner's forward (GEMMs, attention) plus the
host work around it: scheduling, building the step's input tensors, sampling, appending the
tokens, detokenising and building each request's output. This script times whole decode
steps and, inside them, the runner's forward (a timing proxy around ``engine.runner``); the
difference per step is the host overhead. It compares the engine's defaults
(``draw="multinomial"``, ``detokenize=True``) with the settings for callers that only want
token ids (``draw="inverse_cdf"``, ``detokenize=False`` — GRPO rollouts), greedy and sampled
(temperature 1), at several batch sizes, on one preset with a real BPE tokenizer trained on
the embedded corpus. Settings alternate in every round; the median step is kept.

    python bench/engine_overhead.py [--preset 5m] [--batches 1 16 64] [--steps 48] [--rounds 3]

``--gemm-sizes`` adds the projection GEMMs alone: one forward's worth of the preset's
layer shapes (q/k/v, o, gate/up, down per layer, random fp32 weights) at 1–64 rows, MKL's
``x @ Wᵀ`` on the runner's pre-transposed copy against the oneDNN pre-packed weight
(`lmforge.infer.packed_gemm`) that the runner uses from two rows on.

There is no peer here: the "before" is the engine's defaults. Last line:
``RESULT engine_overhead host_ms_b<B>_<mode>_<setting>=… tok_s_b<B>_<mode>_<setting>=…
gemm_ms_<size>_r<rows>_{mkl,packed}=…``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lmforge
from lmforge.data.tasks import synthetic_corpus
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer

SETTINGS = {"default": ("multinomial", True), "ids_only": ("inverse_cdf", False)}


class TimedRunner:
    """Forwards everything to the engine's runner and adds up the time of its calls."""

    def __init__(self, runner) -> None:
        self.runner, self.seconds = runner, 0.0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.runner(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


def tokenizer_for(vocab: int) -> Tokenizer:
    """A byte-level BPE of up to ``vocab`` tokens trained on the synthetic story corpus (so
    detokenising does real work)."""
    return Tokenizer.train(synthetic_corpus(2000, 0), vocab_size=vocab)


def time_steps(model, tok, batch: int, steps: int, mode: str, setting: str) -> tuple[float, float]:
    """(wall ms per decode step, forward ms per decode step) over ``steps`` decode steps of
    ``batch`` requests with 32-token prompts (the prefill step excluded)."""
    draw, detok = SETTINGS[setting]
    temperature = 0.0 if mode == "greedy" else 1.0
    params = SamplingParams(max_tokens=steps + 1, temperature=temperature, ignore_eos=True,
                            detokenize=detok, seed=0)  # fmt: skip
    engine = Engine(model, tok, max_num_seqs=batch, draw=draw)
    timed = TimedRunner(engine.runner)
    engine.runner = timed
    prompts = [[(7 * i + j) % 200 + 3 for j in range(32)] for i in range(batch)]
    for p in prompts:
        engine.add_request(p, params)
    engine.step()  # prefill
    timed.seconds = 0.0
    start = time.perf_counter()
    n = 0
    while engine.has_unfinished():
        engine.step()
        n += 1
    wall = time.perf_counter() - start
    return 1e3 * wall / n, 1e3 * timed.seconds / n


def gemm_rows(size: str, rows: list[int], repeats: int = 20) -> dict[str, float]:
    """ms for one forward's projections of preset ``size`` at each row count: MKL on the
    pre-transposed weight vs the oneDNN pre-packed one (best of 5 × ``repeats``), and for
    reference fbgemm's dynamic int8 linear (``dyn_int8``: int8 weights per channel,
    activations quantised per call, as llama.cpp's q8_0 does by blocks) where available."""
    from lmforge.infer.packed_gemm import pack_weight, packed_linear, packing_enabled

    cfg = preset_config(size)
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes = [(q + 2 * kv, h), (h, q), (2 * cfg.intermediate_size, h), (h, cfg.intermediate_size)]
    weights = [torch.randn(*s) for s in shapes]
    transposed = [w.t().contiguous() for w in weights]
    if not packing_enabled(weights[0]):
        return {}
    packed = [pack_weight(w) for w in weights]
    int8 = dynamic_int8_weights(weights)
    out: dict[str, float] = {}
    for n in rows:
        xs = {w.shape[1]: torch.randn(n, w.shape[1]) for w in weights}
        calls = {
            "mkl": lambda xs=xs: [xs[w.shape[1]] @ t for w, t in zip(weights, transposed)],
            "packed": lambda xs=xs: [
                packed_linear(xs[w.shape[1]], p, None) for w, p in zip(weights, packed)
            ],  # fmt: skip
        }
        if int8 is not None:
            calls["dyn_int8"] = lambda xs=xs: [
                torch.ops.quantized.linear_dynamic(xs[w.shape[1]], p, True)
                for w, p in zip(weights, int8)
            ]
        for name, call in calls.items():
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(repeats):
                    for _ in range(cfg.num_hidden_layers):
                        call()
                best = min(best, (time.perf_counter() - start) / repeats)
            out[f"gemm_ms_{size}_r{n}_{name}"] = 1e3 * best
        print(f"{size} projections, {n:>3} rows: MKL x @ Wᵀ {out[f'gemm_ms_{size}_r{n}_mkl']:7.2f} ms"
              f"   oneDNN pre-packed {out[f'gemm_ms_{size}_r{n}_packed']:7.2f} ms"
              f"   fbgemm dynamic int8 {out.get(f'gemm_ms_{size}_r{n}_dyn_int8', float('nan')):7.2f} ms")  # fmt: skip
    return out


def dynamic_int8_weights(weights: list[torch.Tensor]) -> list | None:
    """fbgemm-packed int8 copies (per-channel absmax scales) of ``weights``, or None when
    this torch has no fbgemm/x86 quantised engine."""
    import warnings

    if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
        return None
    packed = []
    with warnings.catch_warnings():  # quantised tensor constructors are deprecated
        warnings.simplefilter("ignore")
        for w in weights:
            scale = (w.abs().amax(1) / 127).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            packed.append(torch.ops.quantized.linear_prepack(q, None))
    return packed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="5m")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gemm-sizes", nargs="*", default=["5m", "30m"])
    ap.add_argument("--gemm-rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = tokenizer_for(1024)
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config(args.preset, vocab_size=len(tok))).eval()
    result: dict[str, float] = {}
    print(f"{args.preset} preset, {args.threads} thread(s), {args.steps} decode steps, "
          f"median of {args.rounds} rounds; host = step − runner forward")  # fmt: skip
    print(f"{'batch':>5} {'mode':>7} {'setting':>9} {'step ms':>8} {'fwd ms':>7} "
          f"{'host ms':>8} {'tok/s':>8}")  # fmt: skip
    for batch in args.batches:
        for mode in ("greedy", "sampled"):
            time_steps(model, tok, batch, 4, mode, "default")  # warm-up
            runs: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
            for _ in range(args.rounds):
                for setting in SETTINGS:
                    runs[setting].append(time_steps(model, tok, batch, args.steps, mode, setting))
            for setting, rs in runs.items():
                step = statistics.median(r[0] for r in rs)
                fwd = statistics.median(r[1] for r in rs)
                host, tps = step - fwd, 1e3 * batch / step
                print(f"{batch:>5} {mode:>7} {setting:>9} {step:8.2f} {fwd:7.2f} {host:8.2f} "
                      f"{tps:8.0f}")  # fmt: skip
                key = f"b{batch}_{mode}_{setting}"
                result[f"host_ms_{key}"], result[f"tok_s_{key}"] = host, tps
    for size in args.gemm_sizes:
        result.update(gemm_rows(size, args.gemm_rows))
    print("RESULT engine_overhead " + " ".join(f"{k}={v:.2f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
