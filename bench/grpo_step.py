"""GRPO step time: lmforge (`lmforge grpo`'s rollouts + objective) vs TRL ``GRPOTrainer``.

Same model (one lmforge ``ModelConfig``; TRL loads lmforge's HF export), same tokenizer,
same chat-formatted arithmetic prompts, same rule reward (accuracy + 0.1 × R1 format),
group size, completion length, β = 0 and μ = 1 (no reference model, one step per
rollout), sampling at temperature 1, AdamW, fp32 on CPU with one torch thread and no
gradient checkpointing (TRL's bf16 / checkpointing defaults are switched off). The model
is randomly initialised, so both sides generate ``--completion`` tokens nearly every time
(EOS is one id in the vocabulary): equal work.

A step is everything: sampling the completions, rewards, advantages, the policy forward
and backward and the optimizer step. The first ``--warmup`` steps of each side are not
timed. lmforge samples through its inference engine (paged KV cache, one ragged batch,
fused weights; one engine kept across rollouts, inverse-CDF draws; ``--compile``: its
compiled decode step, compiled in the warm-up step) and runs each prompt once for its
group's completions in the training forward (`lmforge.align.shared_prompt`;
``--compile-train``: that forward and its backward through ``torch.compile``); TRL samples
through ``model.generate`` (padded batch, HF dynamic cache) and trains on the padded
prompt + completion batch.

The two sides alternate for ``--rounds`` rounds (lmforge, TRL, lmforge, TRL, …) so that a
change in the machine's load hits both; a side's figure is its median step, the ratio the
median of the rounds' ratios. Both the wall time and the process's CPU time are measured:
on a shared machine the CPU time is the robust one (the wall time also counts the time the
step waited for other processes).

    python bench/grpo_step.py [--preset 5m] [--prompts 4] [--group 8] [--completion 64] [--rounds 2]
                              [--compile] [--compile-train] [--only lmforge|trl]

Last line: ``RESULT grpo_step ratio=<TRL ÷ lmforge wall seconds per step>
cpu_ratio=<TRL ÷ lmforge CPU seconds per step>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

import torch

from lmforge.align.grpo_trainer import GRPOConfig, GRPOObjective, GRPORollouts
from lmforge.align.rl_tasks import r1_prompt_ids, r1_reward
from lmforge.align.rollout import Completion
from lmforge.data.tasks.arithmetic import arithmetic_problems
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.models.hf import save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import load_config
from lmforge.train.loop import Trainer


def clocks() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine the CPU time is what
    the step cost; the wall time also counts waiting for other processes."""
    return time.perf_counter(), time.process_time()


def per_step(times: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and CPU seconds per step."""
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bench_lmforge(model_dir, tok, problems, args) -> float:
    from lmforge.models.hf import load_model

    model = load_model(model_dir, dtype=torch.float32)
    over = {"train.batch_size": args.prompts * args.group, "train.max_steps": args.steps,
            "optim.lr": 1e-5, "optim.schedule": "constant", "optim.warmup_steps": 0,
            "optim.weight_decay": 0.0, "train.save_every": 0, "train.eval_every": 0,
            "log.progress": False, "log.plot": False, "grpo.group_size": args.group,
            "grpo.max_new_tokens": args.completion, "grpo.stop": [], "train.device": "cpu",
            "grpo.beta": 0.0, "grpo.iterations": 1, "train.compile": args.compile_train}  # fmt: skip
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in over.items()], GRPOConfig)
    s = config.grpo
    reward = lambda item, c: r1_reward(item, c, s.format_weight)  # noqa: E731
    data = GRPORollouts(model, tok, problems, reward, s, config.train.batch_size, 1, 0,
                        encode=lambda p: r1_prompt_ids(tok, p), pad_id=tok.pad_token_id,
                        compile_decode=args.compile)  # fmt: skip
    times: list[tuple[float, float]] = []
    tick = [clocks()]

    def timer(trainer, record):
        now = clocks()
        times.append((now[0] - tick[0][0], now[1] - tick[0][1]))
        tick[0] = now

    trainer = Trainer(model, data, config, objective=GRPOObjective(s), callbacks=[timer])
    tick[0] = clocks()
    trainer.fit()
    lengths = data.last_stats.get("length")
    timed = times[args.warmup :]
    print(f"  lmforge: {len(timed)} timed steps, last mean completion length {lengths:.1f}; "
          f"steps (s): {' '.join(f'{t[0]:.2f}' for t in times)}")  # fmt: skip
    return per_step(timed)


def bench_trl(model_dir, tok, problems, args) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    hf_tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    by_prompt = {tok.apply_chat_template([{"role": "user", "content": p.prompt}],
                                         add_generation_prompt=True): p for p in problems}  # fmt: skip
    dataset = Dataset.from_dict({"prompt": list(by_prompt)})

    def reward(prompts, completions, **kwargs):
        return [r1_reward(by_prompt[p], Completion([], [0], c, "stop"))["reward"]
                for p, c in zip(prompts, completions)]  # fmt: skip

    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = clocks()

        def on_step_end(self, *a, **k):
            now = clocks()
            times.append((now[0] - self.t[0], now[1] - self.t[1]))

    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = TRLConfig(
            output_dir=out, per_device_train_batch_size=args.prompts * args.group,
            num_generations=args.group, max_completion_length=args.completion,
            max_steps=args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
            weight_decay=0.0, beta=0.0, num_iterations=1, temperature=1.0,
            bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
            report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
            dataloader_num_workers=0, seed=0, loss_type="grpo", scale_rewards="group",
        )  # fmt: skip
        trainer = GRPOTrainer(model=hf, reward_funcs=reward, args=config,
                              train_dataset=dataset, processing_class=hf_tok,
                              callbacks=[Timer()])  # fmt: skip
        trainer.train()
    timed = times[args.warmup :]
    print(f"  TRL: {len(timed)} timed steps; steps (s): {' '.join(f'{t[0]:.2f}' for t in times)}")
    return per_step(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--completion", type=int, default=64, help="max completion tokens")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating lmforge/TRL rounds")
    parser.add_argument("--compile", action="store_true",
                        help="lmforge's rollout engine runs its compiled decode step (compiled "
                        "during the untimed warm-up step)")  # fmt: skip
    parser.add_argument("--compile-train", action="store_true",
                        help="lmforge's training forward and backward run through torch.compile "
                        "(train.compile; compiled during the untimed warm-up step)")  # fmt: skip
    parser.add_argument(
        "--only",
        choices=("lmforge", "trl"),
        default=None,
        help="time one side only (profiling; no ratio)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    problems = arithmetic_problems(200, seed=0, digits=3, ops=("+",))
    texts = synthetic_corpus(500, 0) + [f"{p.prompt} {p.answer}" for p in problems]
    tok = Tokenizer.train(texts, vocab_size=1024)
    cfg = preset_config(args.preset, vocab_size=1024, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = CausalLM(cfg)
    print(
        f"model {args.preset}: {model.num_parameters():,} parameters; {args.prompts} prompts × "
        f"{args.group} completions × ≤{args.completion} tokens per step; fp32, 1 thread"
    )
    wall, cpu = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        save_model(model, model_dir, tokenizer=tok)
        if args.only is not None:
            side = bench_lmforge if args.only == "lmforge" else bench_trl
            for round_ in range(1, args.rounds + 1):
                wall_s, cpu_s = side(model_dir, tok, problems, args)
                print(f"round {round_}: {args.only} step: {wall_s:.3f} s wall, {cpu_s:.3f} s CPU")
                wall.append(wall_s)
                cpu.append(cpu_s)
            print(f"RESULT grpo_step only={args.only} s_per_step={statistics.median(wall):.3f} "
                  f"cpu_s_per_step={statistics.median(cpu):.3f}")  # fmt: skip
            return
        for round_ in range(1, args.rounds + 1):
            ours = bench_lmforge(model_dir, tok, problems, args)
            print(f"round {round_}: lmforge GRPO step: {ours[0]:.3f} s wall, {ours[1]:.3f} s CPU")
            theirs = bench_trl(model_dir, tok, problems, args)
            print(f"round {round_}: TRL GRPOTrainer step: {theirs[0]:.3f} s wall, "
                  f"{theirs[1]:.3f} s CPU (ratios {theirs[0] / ours[0]:.2f} wall, "
                  f"{theirs[1] / ours[1]:.2f} CPU)")  # fmt: skip
            wall.append(theirs[0] / ours[0])
            cpu.append(theirs[1] / ours[1])
    print(f"RESULT grpo_step ratio={statistics.median(wall):.2f} "
          f"cpu_ratio={statistics.median(cpu):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
