"""Structured generation: llguidance vs xgrammar on lmforge tokenizers, and the cost per token.

1. Import time of each grammar engine (fresh interpreter).
2. On byte-level BPE tokenizers trained here on synthetic text (8192 ids, as the ``5m``
   preset, and a larger one): tokenizer set-up time, cold compile time per schema, and the
   time per generated token of `mask_logits` + `accept` + `is_finished` along random walks
   through each grammar.
3. Per-token overhead of constrained over unconstrained decoding with the same single-request
   loop (`constrained_generate`) on the ``5m`` preset: both runs produce the same number of
   tokens per request, rounds interleave, and the medians are compared.

All times are CPU time of this process (`time.process_time`), which a busy machine does not
inflate the way it inflates wall time; the grammar engines run in the calling thread.

    python bench/structured.py [--rounds 3] [--threads 1] [--large-vocab 32768]

Last line: ``RESULT structured overhead=<fraction> backend=<default backend>``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch

import lmforge
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.infer.structured import compile_constraint, constrained_generate
from lmforge.infer.structured_backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    clear_grammar_cache,
    compiled_grammars,
)
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer


def _clock() -> float:
    """CPU seconds of this process: the shared 2-core machines these run on are busy, and
    wall time would mostly measure the neighbours. Every engine here runs in our threads."""
    return time.process_time()


SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        },
        "required": ["name", "age", "email"],
    },
    "order": {
        "$defs": {
            "item": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    "price": {"type": "number", "minimum": 0, "maximum": 1000},
                },
                "required": ["sku", "qty", "price"],
            }
        },
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "paid": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 10},
            "items": {
                "type": "array",
                "items": {"$ref": "#/$defs/item"},
                "minItems": 1,
                "maxItems": 3,
            },
        },  # fmt: skip
        "required": ["id", "paid", "items"],
    },
    "choice": {
        "anyOf": [
            {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"]},
            {
                "type": "object",
                "properties": {"error": {"type": "string", "maxLength": 16}},
                "required": ["error"],
            },
        ]
    },  # fmt: skip
}
REGEX = r"[A-Z][a-z]{2,8} [0-9]{1,3}(\.[0-9]{2})? (EUR|USD)"


def training_texts(n: int, seed: int = 0) -> list[str]:
    """Stories and arithmetic, pseudo-word prose, small JSON documents and printable noise,
    so a byte-level BPE vocabulary of tens of thousands of ids fills up."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + ["th", "sh", "ng"]

    def word() -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))

    docs = synthetic_corpus(n // 2, seed)
    for _ in range(n - len(docs)):
        r = rng.random()
        if r < 0.4:
            docs.append(" ".join(word() for _ in range(rng.randint(20, 80))))
        elif r < 0.8:
            values = [word(), rng.randint(-999, 9999), rng.random(), True, None, [word()]]
            obj = {word(): rng.choice(values) for _ in range(rng.randint(1, 6))}
            docs.append(json.dumps(obj, separators=rng.choice([(",", ":"), (", ", ": ")])))
        else:
            docs.append("".join(chr(rng.randint(0x20, 0x7E)) for _ in range(60)))
    return docs


def import_seconds(module: str) -> float:
    code = f"import time, torch; t = time.perf_counter(); import {module}; "
    code += "print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def compile_times(tok: Tokenizer, backend: str, repeats: int = 3) -> tuple[float, dict]:
    """(tokenizer set-up seconds, {spec name: median cold compile seconds})."""
    clear_grammar_cache()
    start = _clock()
    compile_constraint(tok, regex="a", backend=backend)
    setup = _clock() - start
    specs = {name: {"json_schema": s} for name, s in SCHEMAS.items()}
    specs |= {"regex": {"regex": REGEX}, "json_object": {"json_object": True}}
    times = {}
    for name, spec in specs.items():
        samples = []
        for _ in range(repeats):
            compiled_grammars(tok).clear()  # keep the tokenizer set-up, drop grammars
            start = _clock()
            compile_constraint(tok, backend=backend, **spec)
            samples.append(_clock() - start)
        times[name] = statistics.median(samples)
    return setup, times


def mask_time_per_token(tok: Tokenizer, backend: str, walks: int = 6) -> dict[str, float]:
    """Seconds per token along uniform random walks through the schemas: the engine's mask
    computation, applying it to a logits row, and accept + is_finished."""
    gen = torch.Generator().manual_seed(0)
    fill = apply = step = 0.0
    tokens = 0
    for walk in range(walks):
        schema = list(SCHEMAS.values())[walk % len(SCHEMAS)]
        c = compile_constraint(tok, json_schema=schema, backend=backend)
        row = torch.zeros(tok.vocab_size)
        for _ in range(150):
            row.zero_()
            t0 = _clock()
            c._fill()  # the engine's mask, computed once per step
            t1 = _clock()
            c.mask_logits(row)
            t2 = _clock()
            allowed = torch.isfinite(row).nonzero().flatten()
            token = int(allowed[torch.randint(len(allowed), (1,), generator=gen)])
            t3 = _clock()
            c.accept(token)
            done = c.is_finished()
            t4 = _clock()
            fill, apply, step = fill + t1 - t0, apply + t2 - t1, step + t4 - t3
            tokens += 1
            if done:
                break
    return {"fill": fill / tokens, "apply": apply / tokens, "accept": step / tokens}


def decode_overhead(model, tok: Tokenizer, backend: str, rounds: int, seeds: int) -> dict:
    """Median per-token time of constrained vs unconstrained decoding, same lengths."""
    prompt = tok.encode("Return the record as JSON:")
    con, free = [], []
    for r in range(rounds):
        con_time = free_time = 0.0
        n_tokens = 0
        for name, schema in SCHEMAS.items():
            for seed in range(seeds):
                c = compile_constraint(tok, json_schema=schema, backend=backend)
                start = _clock()
                ids = constrained_generate(model, tok, prompt, c, 256, seed=seed + 100 * r)
                con_time += _clock() - start
                if not c.is_finished():
                    raise RuntimeError(f"{backend} {name} seed {seed}: output did not complete")
                json.loads(tok.decode(ids))
                # The same number of decode steps without a constraint.
                n = len(ids)
                start = _clock()
                free_ids = constrained_generate(model, tok, prompt, None, n, seed=seed)
                steps = min(len(free_ids) + 1, n)  # +1: a sampled stop token ends it early
                free_time += (_clock() - start) * n / steps
                n_tokens += n
        con.append(con_time / n_tokens)
        free.append(free_time / n_tokens)
    c_med, f_med = statistics.median(con), statistics.median(free)
    return {"constrained_s": c_med, "free_s": f_med, "overhead": c_med / f_med - 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3, help="requests per schema and round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--large-vocab", type=int, default=32768, help="0 to skip")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    print("import seconds:", {m: round(import_seconds(m), 3) for m in BACKENDS})
    vocabs = [8192] + ([args.large_vocab] if args.large_vocab else [])
    toks = {}
    for v in vocabs:
        start = _clock()
        toks[v] = Tokenizer.train(training_texts(20000 if v <= 8192 else 50000), vocab_size=v)
        print(f"trained a {toks[v].vocab_size}-id tokenizer in {_clock() - start:.1f}s")

    for backend in BACKENDS:  # imported before timing the set-up
        __import__(backend)
    print("\nµs/token: the engine's mask, applying it to the row, accept + is_finished")
    print("| backend | vocab | tokenizer set-up ms | compile ms per spec | µs/token |")
    print("|---|---|---|---|---|")
    for tok in toks.values():
        for backend in BACKENDS:
            setup, times = compile_times(tok, backend)
            per = mask_time_per_token(tok, backend)
            spec_ms = ", ".join(f"{k} {t * 1e3:.1f}" for k, t in times.items())
            us = ", ".join(f"{k} {per[k] * 1e6:.0f}" for k in ("fill", "apply", "accept"))
            print(f"| {backend} | {tok.vocab_size} | {setup * 1e3:.0f} | {spec_ms} | {us} |")

    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config("5m", vocab_size=toks[8192].vocab_size)).eval()
    print(f"\ndecode on preset 5m ({model.num_parameters() / 1e6:.1f}M params), "
          f"{args.threads} thread(s), batch 1")  # fmt: skip
    print("| backend | unconstrained ms/token | constrained ms/token | overhead |")
    print("|---|---|---|---|")
    results = {}
    for backend in BACKENDS:
        r = results[backend] = decode_overhead(model, toks[8192], backend, args.rounds, args.seeds)
        print(
            f"| {backend} | {r['free_s'] * 1e3:.2f} | {r['constrained_s'] * 1e3:.2f} | "
            f"{r['overhead']:+.1%} |"
        )
    overhead = results[DEFAULT_BACKEND]["overhead"]
    print(f"RESULT structured overhead={overhead:.4f} backend={DEFAULT_BACKEND}")


if __name__ == "__main__":
    main()
