"""Copies of one prompt submitted together (``n`` samples, a GRPO group, an agent's state
group) with and without the scheduler's shared prefill (`lmforge.infer.scheduler`: a waiting
prompt whose next KV block a running prompt is computing waits one step for the prefix cache).

The model: lmforge's ``30m`` preset, random init, seed 0 (speed only). Each round submits
``--prompts`` distinct prompts of ``--prompt-len`` tokens, ``--copies`` copies each, all at
once, and generates ``--new-tokens`` tokens per request (seeded sampling, the same tokens both
ways); the two settings alternate round by round on fresh engines, medians reported, one
thread by default. Figures: wall seconds per round and the prefix-cache hit rate (prompt
tokens served from the cache).

    python bench/shared_prefill.py [--rounds 5] [--copies 8] [--prompts 4] [--prompt-len 384]

Last line ``RESULT shared_prefill speedup=<separate s ÷ shared s> hit_shared=<…>
hit_separate=<…> s_shared=<…> s_separate=<…>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmforge.infer import Engine, SamplingParams
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def one_round(
    model: CausalLM, prompts: list[list[int]], args, shared: bool
) -> tuple[float, float, list]:
    """(wall seconds, prefix-cache hit rate, the generated tokens) of one round."""
    engine = Engine(model, max_num_seqs=len(prompts) * args.copies)
    engine.scheduler.share_prefill = shared
    requests = [p for p in prompts for _ in range(args.copies)]
    params = [SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=i, ignore_eos=True)
              for i in range(len(requests))]  # fmt: skip
    start = time.perf_counter()
    outs = engine.generate(requests, params)
    wall = time.perf_counter() - start
    return wall, engine.stats()["prefix_cache_hit_rate"], [o.token_ids for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=384)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CausalLM(preset_config("30m", bos_token_id=1, eos_token_id=2)).eval()
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist()
               for _ in range(args.prompts)]  # fmt: skip
    one_round(model, prompts, args, True)  # warm-up (the runner's weight copies)
    times: dict[bool, list[float]] = {True: [], False: []}
    hits: dict[bool, float] = {}
    for r in range(args.rounds):
        tokens = {}
        for shared in (True, False) if r % 2 == 0 else (False, True):
            wall, hit, tokens[shared] = one_round(model, prompts, args, shared)
            times[shared].append(wall)
            hits[shared] = hit
        if tokens[True] != tokens[False]:
            raise SystemExit("the two settings generated different tokens")
        print(
            f"round {r}: shared {times[True][-1]:.2f} s, separate {times[False][-1]:.2f} s",
            flush=True,
        )
    s_shared, s_separate = statistics.median(times[True]), statistics.median(times[False])
    print(f"{args.prompts} prompts × {args.copies} copies of {args.prompt_len} tokens, "
          f"{args.new_tokens} new each: shared prefill {s_shared:.2f} s (cache hits "
          f"{hits[True]:.0%}), separate {s_separate:.2f} s ({hits[False]:.0%})")  # fmt: skip
    print(f"RESULT shared_prefill speedup={s_separate / s_shared:.3f} hit_shared={hits[True]:.3f} "
          f"hit_separate={hits[False]:.3f} s_shared={s_shared:.3f} s_separate={s_separate:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
