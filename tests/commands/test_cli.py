"""`lmforge` itself: the entry points, ``--version``, every example printed in every ``--help``
(run, or for training commands resolved with ``--print-config``), usage errors, and clean
one-line errors for bad paths and broken checkpoints across commands."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from lmforge.cli import build_parser
from lmforge.commands.common import OVERRIDE, CommandDone
from lmforge.models.hf import load_model, save_model
from lmforge.models.quantize import quantize_model


# ---------------------------------------------------------------------- entry points
def test_python_dash_m_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("tokenizer", "info", "convert", "generate", "demo", "examples:"):
        assert command in result.stdout


def test_version(run):
    import lmforge

    code, out, _ = run("--version")
    assert code == 0 and out.startswith(f"lmforge {lmforge.__version__} (Python ")


def test_help_returns_zero_and_unknown_command_is_a_usage_error(run):
    assert run("convert", "--help")[0] == 0
    code, _, err = run("frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = run()
    assert code == 2 and "required" in err


def test_every_command_is_registered_in_order():
    from lmforge.commands import COMMANDS

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert list(commands.choices) == [m.__name__.rsplit(".", 1)[1] for m in COMMANDS]
    assert list(commands.choices)[:14] == ["tokenizer", "info", "convert", "generate", "demo",
                                           "serve", "chat", "pretrain", "sft", "merge", "dpo",
                                           "rm", "grpo", "ppo"]  # fmt: skip


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{path}"],
        ["info", "{path}", "--json"],
        ["convert", "{path}", "--out", "{tmp}/out"],
        ["generate", "--model", "{path}", "--prompt", "x"],
        ["tokenizer", "train", "--input", "{path}", "--vocab-size", "300", "--out", "{tmp}/t"],
    ],
)
def test_missing_path_is_a_clean_error(tmp_path, run, argv):
    missing = tmp_path / "does-not-exist"
    argv = [a.format(path=missing, tmp=tmp_path) for a in argv]
    code, out, err = run(*argv)
    assert code == 2
    assert str(missing) in err and "no such" in err and "Traceback" not in err


def test_folder_that_is_not_a_checkpoint(tmp_path, run):
    (tmp_path / "notes.txt").write_text("hello")
    for argv in (["info", str(tmp_path)], ["generate", "--model", str(tmp_path), "--prompt", "x"]):
        code, _, err = run(*argv)
        assert code == 2 and f"{tmp_path}: not a checkpoint folder" in err


def test_broken_checkpoints_report_the_offending_file(checkpoint, tmp_path, run):
    folder, _ = checkpoint
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "gpt9"}')
    code, _, err = run("info", str(bad_config))
    assert code == 2 and str(bad_config / "config.json") in err and "gpt9" in err

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((folder / "config.json").read_bytes())
    code, _, err = run("convert", str(no_weights), "--out", str(tmp_path / "o"))
    assert code == 2 and str(no_weights) in err and "model.safetensors" in err

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((folder / name).read_bytes())
    code, _, err = run("generate", "--model", str(no_tokenizer), "--prompt", "x")
    assert code == 2 and str(no_tokenizer / "tokenizer.json") in err and "Traceback" not in err


def test_bad_weight_dtype_is_a_clean_error_in_generate_and_sft(checkpoint, tmp_path, run):
    """An int32 tensor in a model folder: one line naming file and tensor, exit 2 (it used
    to be a RuntimeError traceback from load_state_dict)."""
    folder, _ = checkpoint
    bad = tmp_path / "int32"
    bad.mkdir()
    for file in folder.iterdir():
        (bad / file.name).write_bytes(file.read_bytes())
    state = load_file(bad / "model.safetensors")
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"].to(torch.int32)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    for argv in (["generate", "--model", str(bad), "--prompt", "x"],
                 ["sft", "--model", str(bad), "--data", str(tmp_path / "chat.jsonl"),
                  "--out", str(tmp_path / "run")]):  # fmt: skip
        code, _, err = run(*argv)
        assert code == 2 and "Traceback" not in err, err
        assert f"{bad / 'model.safetensors'}: tensor 'model.embed_tokens.weight' is int32" in err
    assert not (tmp_path / "run").exists()  # refused before any work


# ---------------------------------------------------------------------- help examples
def help_examples() -> list[tuple[str, list[str]]]:
    """Every ``lmforge …`` line printed in the epilog of every ``--help`` (top level and each
    command, nested ones included), without a trailing ``# comment`` or ``| pipe``."""
    found = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for line in (parser.epilog or "").splitlines():
            text = line.strip()
            if text.startswith("lmforge "):
                text = text.split(" # ")[0].split(" | ")[0].strip()
                found.append((text, shlex.split(text)[1:]))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return found


EXAMPLES = help_examples()
# Commands whose examples run for real in the `workspace` (training commands are resolved
# with --print-config; serve and chat are interactive).
RUN_FOR_REAL = ("info", "convert", "generate", "merge", "tokenizer")


def test_every_command_prints_examples():
    commands = {argv[0] for _, argv in EXAMPLES}
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands == set(action.choices) and len(EXAMPLES) >= 30


@pytest.fixture
def workspace(tmp_path, monkeypatch, checkpoint, adapter, hf_cache):
    """A working folder (not the repository: recipes resolve from the package) where the
    paths the examples name exist: ckpt/, runs/*/model, adapters, text files, a Hub id."""
    folder, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    links = {"ckpt": folder, "runs/demo/model": folder, "runs/sft/model": folder,
             "runs/sft-lora/model": adapter, "peft-adapter": adapter,
             **{f"runs/rl-s{i}/model": folder for i in range(3)}, "a": folder, "b": folder}  # fmt: skip
    for name, target in links.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(target)
    hf_cache("Qwen/Qwen2.5-0.5B")
    quantized = load_model(folder)  # for `convert ckpt-int8/ …` (dequantise)
    quantize_model(quantized, "int8")
    save_model(quantized, tmp_path / "ckpt-int8")
    text = "the quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "notes.txt").write_text(text + "\n\n" + text[::-1])
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(text)
    (tmp_path / "extra.jsonl").write_text(json.dumps({"text": text}) + "\n")
    return tmp_path


def config_value(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def same_value(got, given: str) -> bool:
    """Whether config value ``got`` is what ``KEY=given`` asked for (YAML, typed)."""
    want = yaml.safe_load(given)
    if isinstance(want, str) and isinstance(got, float):
        return got == float(want)  # YAML 1.1 reads 1e-3 as a string; the config types it
    return got == want


@pytest.mark.parametrize("text,argv", EXAMPLES, ids=[text for text, _ in EXAMPLES])
def test_help_example_works_as_written(text, argv, workspace, run, monkeypatch, capsys):
    """Training commands (those with ``--config``): the example resolves (``--print-config``)
    to a config holding every override and flag it gives; `RUN_FOR_REAL` commands run on
    tiny files; ``demo`` reaches `run_demo` with its flags; the rest (``serve``, ``chat``)
    parse."""
    command = argv[0]
    args = build_parser().parse_args(argv)  # parses as printed
    if hasattr(args, "config"):  # a training command: resolve the config, print it, stop
        if hasattr(args, "print_config"):
            code, out, err = run(*argv, "--print-config")
            assert code == 0, err
        else:  # a command without the flag (yet) that builds its config with run_config
            args.print_config = True
            with pytest.raises(CommandDone):
                args.run(args)
            out = capsys.readouterr().out
        config = yaml.safe_load(out)
        for token in args.overrides:
            key, _, value = token.partition("=")
            assert same_value(config_value(config, key), value), token
        assert [t for t in argv if OVERRIDE.match(t)] == args.overrides  # none swallowed
        flags = vars(args)
        if flags.get("out"):
            assert config["out_dir"] == args.out
        if flags.get("model"):
            assert config["model"]["init_from"] == args.model
        if flags.get("data"):
            assert config["data"]["paths"] == args.data
    elif command == "demo":
        import lmforge.align.r1_pipeline as pipeline
        import lmforge.align.r1_zero as zero

        calls = []
        record = lambda name: lambda out, *a, **kw: calls.append((name, out, a, kw))  # noqa: E731
        monkeypatch.setattr(pipeline, "run_demo", record("demo"))
        monkeypatch.setattr(pipeline, "run_demo_seeds", record("seeds"))
        monkeypatch.setattr(zero, "run_zero", record("zero"))
        assert run(*argv)[0] == 0
        [(name, out, positional, kw)] = calls
        assert kw["fast"] == args.fast
        if args.zero:
            assert name == "zero" and kw["seed"] == args.seed
        elif args.seeds is not None:
            assert name == "seeds" and positional == (pipeline.parse_seeds(args.seeds),)
            assert kw["jobs"] == args.jobs
        else:
            assert name == "demo" and kw["seed"] == args.seed
        assert out == args.out or args.out is None
    elif command in RUN_FOR_REAL:
        extra = ["--max-new-tokens", "4"] if command == "generate" else []
        code, out, err = run(*argv, *extra)
        assert code == 0, err
        assert out.strip() or command == "generate"
    else:  # serve / chat (interactive) and commands without a workspace here: they parse
        assert callable(args.run)


# ---------------------------------------------------------------------- recipes
def test_runs_without_config_use_the_built_in_recipe_from_any_folder(tmp_path, monkeypatch, run):
    from lmforge.commands.common import RECIPES_DIR

    monkeypatch.chdir(tmp_path)  # no recipes/ here
    code, out, err = run("pretrain", "--print-config")
    assert code == 0, err
    recipe = yaml.safe_load((RECIPES_DIR / "pretrain-tiny.yaml").read_text())
    assert yaml.safe_load(out)["out_dir"] == recipe["out_dir"]
    code, out, err = run("pretrain", "--out", "p", "model.preset=tiny", "data.synthetic_docs=40",
                         "data.val_docs=0", "data.seq_len=32", "train.batch_size=2",
                         "train.max_steps=1", "train.max_time_s=0", "train.eval_every=0",
                         "train.save_every=0", "log.progress=false", "log.plot=false",
                         "data.num_workers=0", "data.vocab_size=300")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "p" / "model" / "config.json").is_file()
    code, _, err = run("pretrain", "--config", "recipes/nope.yaml", "--print-config")
    assert code == 2 and "recipes/nope.yaml: no such config file" in err
