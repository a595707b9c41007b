"""`lmforge generate`: continue a prompt with a checkpoint (and optionally a PEFT adapter) and
its tokenizer; prints the completion (`lmforge.infer.generate.generate`).

    lmforge generate --model ckpt/ --prompt "Once upon a time" [--chat] [--greedy]
    lmforge generate --adapter runs/sft-lora/model --prompt "2+3?" --chat   # base recorded
    lmforge generate --model ckpt/ --prompt "Hi" --speculative medusa --drafter runs/m/medusa
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.commands.common import CommandError, model_folder, subparser
from lmforge.io import read_json


def add_parser(subparsers: Any) -> None:
    p = subparser(
        subparsers,
        "generate",
        "continue a prompt with a checkpoint and its tokenizer; prints the completion",
        '  lmforge generate --model runs/demo/model --prompt "12 + 7 =" --greedy\n'
        '  lmforge generate --model ckpt/ --prompt "Tell me a story" --chat --seed 1\n'
        '  lmforge generate --model ckpt/ --adapter runs/sft-lora/model --prompt "Hi" --chat\n'
        '  lmforge generate --model Qwen/Qwen2.5-0.5B --prompt "Hello"   # in the HF cache\n\n'
        "Sampling settings default to the checkpoint's generation_config.json, then to\n"
        "plain sampling (temperature 1). Giving any of them turns sampling on. Without\n"
        "--model, --adapter's recorded base (base_model_name_or_path) is used.",
    )
    p.add_argument(
        "--model", metavar="DIR",
        help="checkpoint folder, or a Hub id in the local Hugging Face cache",
    )  # fmt: skip
    p.add_argument(
        "--adapter", metavar="DIR", help="PEFT adapter folder applied to the model (LoRA merged)"
    )
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="default: 128")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--top-k", type=int, help="keep only the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1: all)")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    add_speculative_arguments(p)
    p.set_defaults(run=run)


def add_speculative_arguments(p: argparse.ArgumentParser) -> None:
    """``--speculative {draft,medusa,mtp,eagle}`` and its drafter flags (generate, serve)."""
    p.add_argument(
        "--speculative", choices=("draft", "medusa", "mtp", "eagle"),
        help="draft-and-verify decoding (exact: same output distribution as without)",
    )  # fmt: skip
    p.add_argument("--draft-model", metavar="DIR", help="--speculative draft: the small model")
    p.add_argument(
        "--drafter", metavar="DIR",
        help="--speculative medusa/eagle: the folder `lmforge medusa/eagle train` wrote",
    )  # fmt: skip
    p.add_argument("--num-draft-tokens", type=int, default=4, metavar="K",
                   help="starting draft length / tree depth, adaptive (default: 4)")  # fmt: skip
    p.add_argument("--tree-width", type=int, default=1, metavar="W",
                   help="medusa/eagle: candidates at depth 1 (default: 1, a chain)")  # fmt: skip


def speculative_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The flags as `lmforge.infer.self_drafters.speculative_config` arguments (or None)."""
    if not getattr(args, "speculative", None):
        return None
    return dict(method=args.speculative, draft_model=args.draft_model, drafter_dir=args.drafter,
                num_draft_tokens=args.num_draft_tokens, tree_width=args.tree_width)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    from lmforge.infer.generate import generate
    from lmforge.models.hf import load_model
    from lmforge.peft.merging import adapter_base, load_adapted
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.distributed import resolve_device

    if not args.model and not args.adapter:
        raise CommandError("name the model: --model DIR (or --adapter DIR with a recorded base)")
    adapter = Path(args.adapter) if args.adapter else None
    folder = model_folder(args.model or adapter_base(adapter))
    device = resolve_device(args.device)
    has_tokenizer = adapter is not None and (adapter / "tokenizer.json").is_file()
    tok = load_tokenizer(adapter if has_tokenizer else folder)
    if adapter is None:
        model = load_model(folder, device=device)
    else:
        model = load_adapted(folder, adapter).to(device)
    model.eval()
    if tok.vocab_size > model.config.vocab_size:
        raise CommandError(
            f"{folder}: tokenizer has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size} (vocab_size in config.json)"
        )
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    else:
        ids = tok.encode(args.prompt, add_special_tokens=True)
    config_eos = model.config.eos_token_id
    config_eos = config_eos if isinstance(config_eos, list) else [config_eos]
    stop = list(dict.fromkeys([*tok.stop_token_ids, *(i for i in config_eos if i is not None)]))
    spec = speculative_settings(args)
    if spec is not None:
        print(speculative_completion(model, tok, ids, spec, stop, args, folder))
        return 0
    out = generate(
        model,
        torch.tensor([ids], device=device),
        max_new_tokens=args.max_new_tokens,
        eos_token_id=stop or None,
        seed=args.seed,
        **sampling_settings(args, folder),
    )
    print(tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))
    return 0


def sampling_settings(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``do_sample``/``temperature``/``top_k``/``top_p``: flags, else generation_config.json."""
    path = folder / "generation_config.json"
    saved = read_json(path, "generation config") if path.is_file() else {}
    given = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p")}
    if args.greedy:
        return {"do_sample": False}
    do_sample = True if any(v is not None for v in given.values()) else saved.get("do_sample", True)
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    settings = {k: v if v is not None else saved.get(k, defaults[k]) for k, v in given.items()}
    return {"do_sample": bool(do_sample), **settings}


def speculative_completion(model, tok, ids, spec, stop, args, folder) -> str:
    """The completion through the engine with a drafter (`lmforge.infer.speculation`)."""
    from lmforge.infer.engine import Engine
    from lmforge.infer.params import SamplingParams
    from lmforge.infer.self_drafters import speculative_config

    settings = sampling_settings(args, folder)
    params = SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=settings["temperature"] if settings["do_sample"] else 0.0,
        top_k=settings.get("top_k", 0), top_p=settings.get("top_p", 1.0),
        stop_token_ids=tuple(stop), seed=args.seed,
    )  # fmt: skip
    try:
        config = speculative_config(target=model, **spec)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    engine = Engine(model, tok, speculative=config)
    out = engine.generate([ids], params)[0]
    return tok.decode(out.token_ids, skip_special_tokens=True)
