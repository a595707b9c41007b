"""Several LoRA adapters in one continuous batch (`lmforge.peft.multi_lora`) against the
reference way to serve them: one engine per adapter with the adapter merged into the weights,
run one after the other.

The same 16 greedy requests (8 per adapter, 32 new tokens each, ``5m`` preset with random
weights, rank-16 LoRA on q/k/v/o) go through (a) one engine whose router picks each request's
adapter per token, and (b) two merged engines in turn (fused weights off in both, so the
difference is batching, not the runner). Every output of (a) must equal the merged engine's
output for that request. Times are CPU time of this process (`time.process_time`), which a
busy machine inflates less than wall time.

    python bench/multi_lora.py [--requests 16] [--tokens 32] [--threads 1]

Last line: ``RESULT multi_lora routed_tok_s=… merged_tok_s=… ratio=… equal=…``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.peft import apply_lora, merge_and_unload
from lmforge.peft.lora import lora_layers
from lmforge.peft.multi_lora import attach_router

NAMES = ("alpha", "beta")


def with_adapters(model: CausalLM) -> CausalLM:
    for k, name in enumerate(NAMES):
        apply_lora(model, r=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                   adapter_name=name)  # fmt: skip
        gen = torch.Generator().manual_seed(10 + k)
        for layer in lora_layers(model).values():
            if name in layer.lora_B:
                for w in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    w.data = torch.randn(w.shape, generator=gen) * 0.05
    return model


def run(engine: Engine, jobs: list[tuple[list[int], int]], params: SamplingParams) -> list:
    ids = [engine.add_request(p, params, adapter=a) if a else engine.add_request(p, params)
           for p, a in jobs]  # fmt: skip
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
    return [done[i] for i in ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = CausalLM(preset_config("5m", max_position_embeddings=512)).eval()
    routed = with_adapters(copy.deepcopy(base))
    router = attach_router(routed, NAMES)
    gen = torch.Generator().manual_seed(1)
    vocab = base.config.vocab_size
    jobs = [(torch.randint(0, vocab, (24,), generator=gen).tolist(), 1 + i % 2)
            for i in range(args.requests)]  # fmt: skip
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    engine = Engine(routed, max_num_seqs=args.requests, adapters=router, fused_weights=False)
    t0 = time.process_time()
    got = run(engine, jobs, params)
    routed_s = time.process_time() - t0
    merged_s, want = 0.0, [None] * len(jobs)
    for index, name in enumerate(NAMES, start=1):
        model = with_adapters(copy.deepcopy(base))
        for layer in lora_layers(model).values():
            layer.active = [name]
        alone = Engine(merge_and_unload(model).eval(), max_num_seqs=args.requests,
                       fused_weights=False)  # fmt: skip
        mine = [k for k, (_, a) in enumerate(jobs) if a == index]
        t0 = time.process_time()
        outs = run(alone, [(jobs[k][0], 0) for k in mine], params)
        merged_s += time.process_time() - t0
        for k, out in zip(mine, outs):
            want[k] = out
    tokens = len(jobs) * args.tokens
    equal = got == want
    print(f"routed (one batch, 2 adapters): {routed_s:.2f} s CPU, {tokens / routed_s:.0f} tok/s")
    print(f"merged (one engine per adapter): {merged_s:.2f} s CPU, {tokens / merged_s:.0f} tok/s")
    print(f"outputs equal: {equal}")
    print(f"RESULT multi_lora routed_tok_s={tokens / routed_s:.0f} "
          f"merged_tok_s={tokens / merged_s:.0f} ratio={merged_s / routed_s:.2f} equal={equal}")  # fmt: skip


if __name__ == "__main__":
    main()
