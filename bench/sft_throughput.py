"""SFT throughput: lmforge (packed rows, no padding) vs TRL ``SFTTrainer`` (padded batches).

Same model (one lmforge ``ModelConfig``, the HF model loads lmforge's export), same
tokenizer, same length-skewed synthetic chat data: conversation lengths 16–512 tokens,
long-tailed (log-normal, median ≈ 60). Both train on every token of each conversation
(``assistant_only`` off on both sides), fp32 on CPU without activation checkpointing
(TRL's bf16 / gradient-checkpointing defaults are switched off to match), one torch thread
(on this 2-core machine single-threaded small-model training is fastest for both), AdamW,
``--batch`` conversations per step for TRL and rows of 512 tokens for lmforge holding about
the same number of real tokens per step.

The figure of merit is *useful* tokens per second: tokens of real conversations (padding
and packing filler excluded) processed per second of steady-state training step time
(the first ``--warmup`` steps of each side are not timed). lmforge's useful tokens are its
rows' tokens × the measured packing efficiency; TRL's are the non-padding tokens of its
batches (``include_num_input_tokens_seen="non_padding"``).

    python bench/sft_throughput.py [--preset 5m] [--examples 512] [--steps 30] [--batch 16]

Last line: ``RESULT sft_throughput ratio=<lmforge ÷ TRL useful tokens/s>``.
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
from lmforge.data.formats import tokenize_conversation
from lmforge.data.loader import SFTLoader
from lmforge.data.tasks.corpus import synthetic_corpus
from lmforge.models.presets import preset_config
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import OptimSection, RunConfig, TrainSection
from lmforge.train.loop import Trainer

SEQ_LEN = 512


def skewed_lengths(n: int, lo: int = 16, hi: int = SEQ_LEN, seed: int = 0) -> list[int]:
    """Long-tailed target lengths in tokens: log-normal (median 60), clipped to [lo, hi]."""
    rng = random.Random(seed)
    return [int(min(hi, max(lo, rng.lognormvariate(math.log(60), 1.0)))) for _ in range(n)]


def make_conversations(tok: Tokenizer, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` user/assistant exchanges whose rendered lengths follow `skewed_lengths`."""
    words = " ".join(synthetic_corpus(400, seed=seed)).split()
    rng = random.Random(seed)
    convs = []
    for target in skewed_lengths(n, seed=seed):
        k = max(4, target)
        start = rng.randrange(len(words) - k)
        text = words[start : start + k]
        cut = max(1, len(text) // 4)
        conv = [
            {"role": "user", "content": " ".join(text[:cut])},
            {"role": "assistant", "content": " ".join(text[cut:])},
        ]
        # trim the assistant turn until the rendered conversation fits the target length
        while len(tok.apply_chat_template(conv, tokenize=True)) > target and len(text) > cut + 1:
            text = text[: -max(1, (len(text) - cut) // 8)]
            conv[1]["content"] = " ".join(text[cut:])
        convs.append(conv)
    return convs


def bench_lmforge(model_dir: str, tok: Tokenizer, convs, steps: int, warmup: int, rows: int):
    model = lmforge.load_model(model_dir)
    examples = [tokenize_conversation(c, tok, assistant_only=False) for c in convs]
    loader = SFTLoader(examples, SEQ_LEN, rows, seed=0, too_long="truncate")
    cfg = RunConfig(
        optim=OptimSection(lr=1e-3, warmup_steps=0, schedule="constant"),
        train=TrainSection(
            batch_size=rows, max_steps=steps, device="cpu", eval_every=0, save_every=0, resume=False
        ),
    )
    cfg.log.progress = False
    times: list[float] = []

    def timer(trainer, record):
        times.append(time.perf_counter())

    trainer = Trainer(model, loader, cfg, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.fit()
    stamps = [t0, *times]
    timed = stamps[warmup:]
    seconds = timed[-1] - timed[0]
    total_tokens = (len(timed) - 1) * rows * SEQ_LEN
    eff = loader.report.efficiency
    return {"useful_tok_s": total_tokens * eff / seconds, "efficiency": eff, "seconds": seconds}


def bench_trl(model_dir: str, convs, steps: int, warmup: int, batch: int):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            max_length=SEQ_LEN,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            report_to="none",
            use_cpu=True,
            logging_steps=10_000,
            save_strategy="no",
            dataloader_num_workers=0,
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=True,
            # TRL's defaults are bf16 autocast and gradient checkpointing; lmforge runs fp32
            # without checkpointing here, so TRL does too (bf16 on an AVX2 CPU is far slower).
            bf16=False,
            gradient_checkpointing=False,
        )
        dataset = Dataset.from_list([{"messages": c} for c in convs])
        trainer = SFTTrainer(
            model=hf, args=args, train_dataset=dataset, processing_class=hf_tok, callbacks=[timer]
        )
        start = time.perf_counter()
        trainer.train()
    marks = [(start, 0), *timer.marks][warmup:]
    seconds = marks[-1][0] - marks[0][0]
    tokens = marks[-1][1] - marks[0][1]
    lengths = [b for b in (len(hf_tok.apply_chat_template(c)) for c in convs)]
    return {
        "useful_tok_s": tokens / seconds,
        "seconds": seconds,
        "mean_len": sum(lengths) / len(lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="5m")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="TRL conversations per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.train(synthetic_corpus(400, seed=0), vocab_size=2048)
    convs = make_conversations(tok, args.examples)
    lengths = [len(tok.apply_chat_template(c, tokenize=True)) for c in convs]
    mean_len = sum(lengths) / len(lengths)
    # lmforge rows per step: about the real tokens TRL sees in one batch of `batch` examples
    rows = max(1, round(args.batch * mean_len / SEQ_LEN))
    torch.manual_seed(0)
    model = lmforge.CausalLM(preset_config(args.preset, vocab_size=len(tok)))
    with tempfile.TemporaryDirectory() as model_dir:
        lmforge.save_model(model, model_dir, tokenizer=tok)
        print(
            f"data: {len(convs)} conversations, lengths {min(lengths)}–{max(lengths)} "
            f"(mean {mean_len:.0f}); model {args.preset}; lmforge {rows} rows × {SEQ_LEN}"
        )
        ours = bench_lmforge(model_dir, tok, convs, args.steps, args.warmup, rows)
        print(
            f"lmforge: {ours['useful_tok_s']:.0f} useful tok/s "
            f"(packing efficiency {ours['efficiency']:.3f}, {ours['seconds']:.1f}s timed)"
        )
        trl = bench_trl(model_dir, convs, args.steps, args.warmup, args.batch)
        print(
            f"TRL SFTTrainer (padding): {trl['useful_tok_s']:.0f} useful tok/s ({trl['seconds']:.1f}s timed)"
        )
    ratio = ours["useful_tok_s"] / trl["useful_tok_s"]
    print(f"RESULT sft_throughput ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
