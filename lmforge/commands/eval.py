"""`lmforge eval`: perplexity on text files and sampled accuracy (pass@k, maj@k, bootstrap
intervals) on built-in tasks or JSONL prompt/answer files, for one or more checkpoints side
by side (`lmforge.eval`).

    lmforge eval --model runs/a/model --model runs/b/model --task arithmetic --samples 8
    lmforge eval --model ckpt/ --text valid.txt
    lmforge eval --model ckpt/ --adapter runs/sft-lora/model --task arithmetic
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "eval",
        "evaluate checkpoints: perplexity on text, pass@k / maj@k on tasks, side by side",
        "  lmforge eval --model ckpt/ --text notes.txt\n"
        "  lmforge eval --model ckpt/ --task arithmetic --problems 8 --samples 4 --k 1,4\n"
        "  lmforge eval --model runs/sft/model --model runs/demo/model --task arithmetic --chat\n"
        "  lmforge eval --model ckpt/ --task qa.jsonl --verifier numeric --out eval/\n"
        "  lmforge eval --model ckpt/ --task qa.jsonl --verifier mypkg.checks:same_answer\n"
        "  lmforge eval --model ckpt/ --adapter runs/sft-lora/model --task arithmetic\n\n"
        "Tasks: arithmetic, countdown (held-out split, exact verifiers) or a JSONL file of\n"
        '{"prompt": …, "answer": …} records checked by --verifier (exact, numeric,\n'
        "math-verify, regex, or module:function called as function(response, answer)).\n"
        "The answer is the last <answer>…</answer> of a response, else the whole response.\n"
        "Sampling follows DeepSeek-R1's pass@1 protocol by default (temperature 0.6, top-p\n"
        "0.95, every problem seeded from --seed and its id); --greedy decodes greedily.",
    )
    p.add_argument("--model", metavar="DIR", action="append", default=[],
                   help="checkpoint folder or cached Hub id; repeat to compare models")  # fmt: skip
    p.add_argument("--adapter", metavar="DIR",
                   help="PEFT adapter folder applied to every --model (LoRA merged); without "
                        "--model, to the base it records")  # fmt: skip
    p.add_argument("--task", action="append", default=[], metavar="NAME|FILE",
                   help="arithmetic, countdown, or a JSONL file of prompt/answer (repeatable)")  # fmt: skip
    p.add_argument("--text", nargs="+", default=[], metavar="FILE", help="text files: perplexity")
    p.add_argument("--verifier", default="exact",
                   help="for JSONL tasks: exact, numeric, math-verify, regex, module:function")  # fmt: skip
    p.add_argument("--problems", type=int, default=100, metavar="N",
                   help="problems per task (default 100; ≤ 0: a file's every record)")  # fmt: skip
    p.add_argument("--samples", type=int, default=1, metavar="N", help="samples per problem (1)")
    p.add_argument("--k", default=None, metavar="K,…",
                   help="pass@k / maj@k values, comma-separated (default: 1 and --samples)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.6, help="default: 0.6")
    p.add_argument("--top-p", type=float, default=0.95, help="default: 0.95")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (one sample)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default: 64")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="problems sampled together (default 16)")  # fmt: skip
    p.add_argument("--context", type=int, metavar="N", help="perplexity window (model's max)")
    p.add_argument("--confidence", type=float, default=0.95, help="bootstrap level (0.95)")
    p.add_argument("--out", metavar="DIR", help="write results.json and results.md here")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    p.set_defaults(run=run)


def parse_ks(text: str | None, samples: int) -> tuple[int, ...]:
    """``--k "1,4"`` → (1, 4); default (1, samples); each k must be in [1, samples]."""
    if text is None:
        return tuple(sorted({1, samples}))
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as exc:
        raise CommandError(f"--k {text!r}: expected comma-separated integers") from exc
    bad = [k for k in ks if not 1 <= k <= samples]
    if not ks or bad:
        raise CommandError(f"--k {text!r}: each k must be in [1, --samples {samples}]")
    return ks


def run(args: argparse.Namespace) -> int:
    from lmforge.eval.checkpoint import evaluate_checkpoint
    from lmforge.eval.report import markdown_table, write_results
    from lmforge.peft.merging import adapter_base
    from lmforge.train.distributed import resolve_device

    if not args.task and not args.text:
        raise CommandError("nothing to evaluate: give --task NAME|FILE and/or --text FILE")
    if args.samples < 1:
        raise CommandError(f"--samples {args.samples}: must be ≥ 1")
    if args.greedy and args.samples > 1:
        raise CommandError("--greedy gives one answer per problem: drop --samples")
    if not args.model and not args.adapter:
        raise CommandError("name the model: --model DIR (or --adapter DIR with a recorded base)")
    if args.adapter and not Path(args.adapter, "adapter_config.json").is_file():
        raise CommandError(f"--adapter {args.adapter}: no adapter_config.json in that folder")
    names = args.model or [str(adapter_base(args.adapter))]
    folders = [model_folder(name) for name in names]
    device = resolve_device(args.device)
    sampling = dict(
        samples=args.samples, ks=parse_ks(args.k, args.samples),
        temperature=0.0 if args.greedy else args.temperature, top_p=args.top_p,
        max_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat,
        batch_size=args.batch_size, confidence=args.confidence,
    )  # fmt: skip
    results = {}
    for name, folder in zip(names, folders, strict=True):
        if args.adapter:
            name = f"{name} + {args.adapter}"
        results[name] = evaluate_checkpoint(
            folder, adapter=args.adapter, tasks=args.task, text_files=args.text, problems=args.problems,
            verifier=args.verifier, context=args.context, device=device, **sampling,
        )  # fmt: skip
    print(markdown_table(results), end="")
    if args.out:
        print(f"results: {write_results(args.out, results)}/results.json, results.md")
    return 0
