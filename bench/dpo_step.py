"""DPO step time: lmforge (`lmforge dpo`'s objective and loader through the Trainer) vs TRL
``DPOTrainer``.

Same model (an lmforge preset exported to HF format; TRL loads that folder), same tokenizer
and chat template, same preference pairs (conversational: a user prompt, a chosen and a
rejected assistant reply, prompt and reply lengths long-tailed), same ``--batch`` pairs per
optimizer step, same sigmoid DPO loss (β = 0.1), AdamW at a constant learning rate, fp32 on
CPU without activation checkpointing (TRL's bf16 / gradient-checkpointing defaults are
switched off), one torch thread. Both compute the reference log-probs every step with a
frozen reference model (no precomputation on either side).

lmforge sorts each batch's 2·batch sequences by length and runs them as 8 forward passes,
each padded only to its own longest sequence, sending only the completion positions through
the output head (``layout=padded``, ``length_groups=8``; packed rows are slower on CPU); TRL pads chosen and rejected to the batch's
longest sequence (its fused LM head likewise scores only completion positions). The first
``--warmup`` steps of each side are not timed; the sides alternate ``--repeats`` times and
each side's fastest run counts (other processes on a shared machine only slow a run down).

    python bench/dpo_step.py [--preset 5m] [--pairs 256] [--steps 20] [--batch 8] [--repeats 2]

Last line: ``RESULT dpo_step ratio=<TRL seconds per step ÷ lmforge seconds per step>``.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
import warnings

import torch

import lmforge
from lmforge.align.preference_data import PreferenceLoader, tokenize_preference
from lmforge.align.preference_objective import PreferenceObjective
from lmforge.align.reference import frozen_copy
from lmforge.data.sources import PreferenceRecord
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import OptimSection, RunConfig, TrainSection
from lmforge.train.loop import Trainer

MAX_LEN = 512
BETA = 0.1
# lmforge's fastest CPU layout: padded rows run as GROUPS forward passes grouped by length
# (unmasked causal attention, little padding); "packed" rows need a block-diagonal mask.
LAYOUT, GROUPS = "padded", 8


def _lognormal(rng: random.Random, median: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), 0.8))))


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational preference records; prompt ≈ 40 words and replies ≈ 60 words
    (medians, log-normal, so batches mix short and long pairs)."""
    words = " ".join(synthetic_corpus(400, seed=seed)).split()
    rng = random.Random(seed)

    def text(median: float, hi: int) -> str:
        k = _lognormal(rng, median, 4, hi)
        start = rng.randrange(len(words) - k)
        return " ".join(words[start : start + k])

    return [
        {
            "prompt": [{"role": "user", "content": text(40, 150)}],
            "chosen": [{"role": "assistant", "content": text(60, 200)}],
            "rejected": [{"role": "assistant", "content": text(60, 200)}],
        }
        for _ in range(n)
    ]


def _record(r: dict) -> PreferenceRecord:
    return PreferenceRecord(tuple(r["prompt"]), tuple(r["chosen"]), tuple(r["rejected"]))


def bench_lmforge(model_dir: str, tok: Tokenizer, records, steps: int, warmup: int, batch: int):
    model = lmforge.load_model(model_dir)
    pairs = []
    for r in records:
        pair = tokenize_preference(_record(r), tok)
        if max(len(pair.chosen), len(pair.rejected)) <= MAX_LEN:
            pairs.append(pair)
    loader = PreferenceLoader(pairs, batch, MAX_LEN, seed=0, layout=LAYOUT)
    objective = PreferenceObjective("sigmoid", BETA, reference=frozen_copy(model),
                                    length_groups=GROUPS)  # fmt: skip
    cfg = RunConfig(
        optim=OptimSection(lr=1e-4, warmup_steps=0, schedule="constant", weight_decay=0.0),
        train=TrainSection(
            batch_size=batch,
            max_steps=steps,
            device="cpu",
            eval_every=0,
            save_every=0,
            resume=False,
        ),  # fmt: skip
    )
    cfg.log.progress = False
    stamps: list[float] = []
    trainer = Trainer(model, loader, cfg, objective=objective,
                      callbacks=[lambda _t, _r: stamps.append(time.perf_counter())])  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit()
    timed = [t0, *stamps][warmup:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    # positions computed per step (rows × width), against the real tokens in the batch
    it = iter(PreferenceLoader(pairs, batch, MAX_LEN, seed=0))
    packed = padded = 0
    for _ in range(steps):
        b = next(it)
        packed += b["input_ids"].numel()  # (the grouped padded layout computes about as many)
        longest = max(max(len(pairs[i].chosen), len(pairs[i].rejected)) for i in b["pair_ids"])
        padded += 2 * batch * longest  # what padding the same pairs to their longest costs
    real = sum(len(p) for p in pairs) / len(pairs) * batch
    return {"per_step": per_step, "positions": packed / steps, "padded": padded / steps,
            "real": real}  # fmt: skip


def bench_trl(model_dir: str, records, steps: int, warmup: int, batch: int):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    ref = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            max_length=MAX_LEN,
            beta=BETA,
            loss_type=["sigmoid"],
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            report_to="none",
            use_cpu=True,
            logging_steps=10_000,
            save_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
            precompute_ref_log_probs=False,
            bf16=False,  # TRL's CPU defaults are bf16 + gradient checkpointing: off, as lmforge
            gradient_checkpointing=False,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                             train_dataset=Dataset.from_list(records),
                             processing_class=hf_tok, callbacks=[timer])  # fmt: skip
        start = time.perf_counter()
        trainer.train()
    marks = [start, *timer.marks][warmup:]
    return {"per_step": (marks[-1] - marks[0]) / (len(marks) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="preference pairs per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--only", choices=["lmforge", "trl"], help="run one side (profiling)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the two sides this many times; report each side's "
                             "fastest run (robust to other load on a shared machine)")  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.train(synthetic_corpus(400, seed=0), vocab_size=2048)
    records = make_pairs(args.pairs)
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config(args.preset, vocab_size=len(tok)))
    with tempfile.TemporaryDirectory() as model_dir:
        lmforge.save_model(model, model_dir, tokenizer=tok)
        print(f"model {args.preset}; {args.pairs} pairs, {args.batch} per step, "
              f"{args.steps} steps ({args.warmup} untimed), fp32, {torch.get_num_threads()} "
              "thread(s)")  # fmt: skip
        ours = trl = None
        for _ in range(args.repeats):
            if args.only != "trl":
                run = bench_lmforge(model_dir, tok, records, args.steps, args.warmup, args.batch)
                print(f"lmforge: {run['per_step'] * 1e3:.0f} ms/step; batches of {run['real']:.0f} "
                      f"real tokens: {run['positions']:.0f} positions packed, "
                      f"{run['padded']:.0f} padded to the longest")  # fmt: skip
                ours = run if ours is None or run["per_step"] < ours["per_step"] else ours
            if args.only != "lmforge":
                run = bench_trl(model_dir, records, args.steps, args.warmup, args.batch)
                print(f"TRL DPOTrainer: {run['per_step'] * 1e3:.0f} ms/step (padded batches)")
                trl = run if trl is None or run["per_step"] < trl["per_step"] else trl
    if ours and trl:
        print(f"fastest: lmforge {ours['per_step'] * 1e3:.0f} ms/step, TRL "
              f"{trl['per_step'] * 1e3:.0f} ms/step")  # fmt: skip
        print(f"RESULT dpo_step ratio={trl['per_step'] / ours['per_step']:.2f}")


if __name__ == "__main__":
    main()
