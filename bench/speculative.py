"""Speculative decoding vs plain target decoding, batch 1, CPU, same code path.

Target: the ``30m`` preset (≈31M parameters, vocabulary 16384). Draft: a ≈1.1M-parameter
model (hidden 64, 2 layers, same vocabulary; most of it the embedding), ~28x smaller.
Random weights do not agree, so:

1. the target is trained briefly (``--train-steps`` AdamW steps, a minute or two of CPU) on a
   predictable synthetic language built here: a first-order Markov chain over 32 of the
   16384 ids where each token is followed by its successor in a fixed random cycle with
   probability 0.9, else by one of two other fixed tokens (0.05 each);
2. the draft is distilled from the target (soft cross-entropy to the target's next-token
   distributions on chain samples of 128 tokens), so it imitates the target *as trained* —
   acceptance measures draft–target agreement, however far the short-trained target still
   is from the chain itself. (60 steps leave the target far from the chain: loss ≈3.1 nats
   vs the chain's 0.39; longer training — 80 steps at 4×32 tokens, loss ≈1.4 — produced a
   target the small draft could not imitate (KL ≈0.45–0.5, acceptance ≈47%).)

Then each prompt (16 tokens sampled from the chain) is continued for ``--new-tokens`` tokens
by ``speculative_generate`` with and without the drafter. Without one the very same loop runs
target-only incremental decoding with a KV cache (one token per target forward), so the
ratio isolates speculation. Runs interleave and report medians, since the machine is shared
and noisy; ``lmforge.infer.generate`` is timed too, for reference. Sampling (temperature 1)
is the headline; greedy numbers are in the returned dict.

    python bench/speculative.py [--train-steps 60] [--new-tokens 96] [--draft-tokens 3]

Last line: ``RESULT speculative spec_speedup=<x> acceptance=<a>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmforge import CausalLM, ModelConfig
from lmforge.infer import generate
from lmforge.infer.speculative import speculative_generate
from lmforge.models.presets import preset_config

ACTIVE = 32  # ids the synthetic language uses
P_NEXT = 0.9  # probability of the cycle successor
N_OTHER = 2  # other possible successors, sharing the remaining probability


class MarkovLanguage:
    """A seeded first-order Markov chain over ``ACTIVE`` token ids (see module docstring)."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randperm(vocab_size, generator=g)[:ACTIVE]
        order = torch.randperm(ACTIVE, generator=g)
        successors = torch.empty(ACTIVE, 1 + N_OTHER, dtype=torch.long)
        successors[order, 0] = order.roll(-1)  # one cycle through all active states
        successors[:, 1:] = torch.randint(0, ACTIVE, (ACTIVE, N_OTHER), generator=g)
        self.successors = successors
        self.weights = torch.tensor([P_NEXT] + [(1 - P_NEXT) / N_OTHER] * N_OTHER)

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, length]`` token ids."""
        state = torch.randint(0, ACTIVE, (batch,), generator=generator)
        states = [state]
        for _ in range(length - 1):
            choice = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
            state = self.successors[state, choice]
            states.append(state)
        return self.ids[torch.stack(states, dim=1)]


SEQ = 128  # training length: prompt + generated tokens stay within it (no unseen positions)


def train(model: CausalLM, lang: MarkovLanguage, steps: int, lr: float) -> float:
    """AdamW steps of next-token prediction on one chain sample each; returns the last loss."""
    g = torch.Generator().manual_seed(1)
    return _fit(model, steps, lr, lambda step: _ce(model, lang.sample(1, SEQ, g)))


def distill(draft: CausalLM, target: CausalLM, lang: MarkovLanguage, steps: int, lr: float):
    """Fit the draft to the target's next-token distributions (soft cross-entropy, i.e.
    KL(p_target ‖ q_draft) up to a constant) on a fixed set of chain samples, so the draft
    imitates the target as trained — acceptance depends on agreement with the target, not
    on either's agreement with the data. Returns the last KL in nats."""
    g = torch.Generator().manual_seed(2)
    data = [lang.sample(2, SEQ, g) for _ in range(12)]
    with torch.inference_mode():
        soft = [target(ids).logits.log_softmax(-1) for ids in data]

    def kl(step: int) -> torch.Tensor:
        ids, log_p = data[step % len(data)], soft[step % len(data)]
        log_q = draft(ids).logits.log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()

    return _fit(draft, steps, lr, kl)


def _ce(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, labels=ids).loss


def _fit(model: CausalLM, steps: int, lr: float, loss_fn) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in opt.param_groups:  # short linear warm-up, then constant
            group["lr"] = lr * min(1.0, (step + 1) / 5)
        loss = loss_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def chain_loss(lang: MarkovLanguage) -> float:
    """Entropy (nats) of the chain's next-token distribution: the best achievable loss."""
    w = lang.weights
    return float(-(w * w.log()).sum())


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_spec_bench(
    train_steps: int = 60,
    draft_steps: int = 300,
    new_tokens: int = 96,
    prompts: int = 2,
    num_draft_tokens: int = 3,
    rounds: int = 2,
    threads: int | None = 1,
    log=print,
) -> dict:
    """Train target and draft, then time speculative vs plain decoding (see module doc).

    ``threads`` (torch intra-op threads; None leaves the setting alone) defaults to 1: batch-1
    decoding is a stream of small ops, and on a busy shared machine extra threads mostly wait
    for each other. Restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(train_steps, draft_steps, new_tokens, prompts, num_draft_tokens, rounds, log)
    finally:
        torch.set_num_threads(previous)


def _models() -> tuple[CausalLM, CausalLM]:
    torch.manual_seed(0)
    target = CausalLM(preset_config("30m"))
    draft = CausalLM(
        ModelConfig(
            vocab_size=target.config.vocab_size,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=target.config.max_position_embeddings,
            tie_word_embeddings=True,
        )
    )
    return target, draft


def _bench(train_steps, draft_steps, new_tokens, prompts, num_draft_tokens, rounds, log) -> dict:
    target, draft = _models()
    lang = MarkovLanguage(target.config.vocab_size)
    t_train, target_loss = _timed(lambda: train(target, lang, train_steps, lr=1e-2))
    target.eval()
    t_draft, draft_loss = _timed(lambda: distill(draft, target, lang, draft_steps, lr=1e-2))
    log(
        f"target {target.num_parameters() / 1e6:.1f}M params: loss {target_loss:.3f} after "
        f"{train_steps} steps ({t_train:.0f}s); draft {draft.num_parameters() / 1e6:.2f}M: "
        f"KL to target {draft_loss:.3f} after {draft_steps} steps ({t_draft:.0f}s); "
        f"chain entropy {chain_loss(lang):.3f} nats"
    )

    g = torch.Generator().manual_seed(123)
    prompt_ids = [lang.sample(1, 16, g) for _ in range(prompts)]
    speculative_generate(target, draft, prompt_ids[0], 8)  # warm-up
    results: dict[str, float] = {}
    for mode, sample in (("sample", True), ("greedy", False)):
        times: dict[str, list[float]] = {"plain": [], "spec": [], "generate": []}
        drafted = accepted = spec_rounds = 0
        for r in range(rounds):
            for i, ids in enumerate(prompt_ids):
                kw = dict(do_sample=sample, seed=1000 * r + i)
                runs = {
                    "plain": lambda ids=ids, kw=kw: speculative_generate(
                        target, None, ids, new_tokens, **kw
                    ),
                    "spec": lambda ids=ids, kw=kw: speculative_generate(
                        target, draft, ids, new_tokens, num_draft_tokens=num_draft_tokens, **kw
                    ),
                    "generate": lambda ids=ids, kw=kw: generate(
                        target, ids, max_new_tokens=new_tokens, **kw
                    ),
                }
                order = list(runs) if (r + i) % 2 == 0 else list(reversed(runs))
                for name in order:  # interleaved, so drift of the machine hits all alike
                    elapsed, out = _timed(runs[name])
                    times[name].append(elapsed)
                    if name == "spec":
                        drafted += out.num_drafted
                        accepted += out.num_accepted
                        spec_rounds += out.num_rounds
        plain, spec, gen = (statistics.median(times[k]) for k in ("plain", "spec", "generate"))
        per_forward = new_tokens * len(times["spec"]) / spec_rounds
        results.update(
            {
                f"{mode}_speedup": plain / spec,
                f"{mode}_acceptance": accepted / drafted,
                f"{mode}_tokens_per_target_forward": per_forward,
                f"{mode}_plain_tok_s": new_tokens / plain,
                f"{mode}_spec_tok_s": new_tokens / spec,
                f"{mode}_generate_tok_s": new_tokens / gen,
            }
        )
        log(
            f"{mode:>6}: plain {new_tokens / plain:6.1f} tok/s | speculative "
            f"{new_tokens / spec:6.1f} tok/s ({plain / spec:.2f}x, acceptance "
            f"{accepted / drafted:.1%}, {per_forward:.2f} tokens/target forward) | "
            f"generate() {new_tokens / gen:6.1f} tok/s"
        )
    results["spec_speedup"] = results["sample_speedup"]
    results["acceptance"] = results["sample_acceptance"]
    results["target_loss"], results["draft_kl"] = target_loss, draft_loss
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--draft-steps", type=int, default=300)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--draft-tokens", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    r = run_spec_bench(
        args.train_steps,
        args.draft_steps,
        args.new_tokens,
        args.prompts,
        args.draft_tokens,
        args.rounds,
        args.threads,
    )
    print(
        f"RESULT speculative spec_speedup={r['spec_speedup']:.2f} acceptance={r['acceptance']:.3f}"
    )


if __name__ == "__main__":
    main()
