"""`lmforge.commands.common`: overrides parse wherever they stand (and ``--data`` stops at
the first), ``--print-config``, built-in recipes, Hub ids for ``--model``."""

from __future__ import annotations

import pytest
import yaml

from lmforge.cli import build_parser
from lmforge.commands.common import RECIPES_DIR, recipe_path, run_config


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv,overrides,data",
    [
        # the sft --help example that used to fail: --data swallowed the override
        (["--data", "a.jsonl", "b.parquet", "data.assistant_only=false"],
         ["data.assistant_only=false"], ["a.jsonl", "b.parquet"]),
        (["k.a=1", "--data", "f", "k.b=2", "--out", "o", "k.c=3"], ["k.a=1", "k.b=2", "k.c=3"],
         ["f"]),
        (["--out", "o", "x.y=1", "--peft", "lora", "x.z=[1, 2]"], ["x.y=1", "x.z=[1, 2]"], None),
        (["--data", "f", "--", "a.b=1", "c.d=2"], ["a.b=1", "c.d=2"], ["f"]),
        # a file name with "=" is still a file when it does not look like section.key=
        (["--data", "./a=b.jsonl", "c.jsonl"], [], ["./a=b.jsonl", "c.jsonl"]),
        (["--out", "x=1"], [], None),  # an option's value is never an override
    ],
)  # fmt: skip
def test_overrides_parse_wherever_they_stand(argv, overrides, data):
    args = parse("sft", *argv)
    assert args.overrides == overrides and args.data == data


def test_options_still_parse_as_argparse_does():
    args = parse("sft", "--mod", "ckpt", "--lora-r", "4", "--rslora", "--data", "a", "b")
    assert (args.model, args.lora_r, args.rslora, args.data) == ("ckpt", 4, True, ["a", "b"])
    assert parse("sft", "--lora-alpha=-2").lora_alpha == -2.0
    args = parse("tokenizer", "train", "--input", "a", "b=c", "--vocab-size", "9", "--out", "t")
    assert args.input == ["a", "b=c"]  # no overrides on this command: nothing moves


def test_override_order_is_kept(capsys):
    from lmforge.cli import main

    code = main(["pretrain", "optim.lr=1", "--out", "o", "optim.lr=2", "--print-config"])
    assert code == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 2.0


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, run):
    out = tmp_path / "run"
    code, text, err = run("sft", "--model", "ckpt/", "--out", str(out), "--data", "a.jsonl",
                          "train.max_steps=7", "--print-config")  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load(text)
    recipe = yaml.safe_load((RECIPES_DIR / "sft-tiny.yaml").read_text())
    assert config["train"]["max_steps"] == 7 and config["out_dir"] == str(out)
    assert config["model"]["init_from"] == "ckpt/" and config["data"]["paths"] == ["a.jsonl"]
    assert config["optim"]["lr"] == recipe["optim"]["lr"]  # the built-in recipe, no --config
    assert not out.exists()


def test_recipe_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipe_path(None, "sft") == RECIPES_DIR / "sft-tiny.yaml"
    assert recipe_path(None, "nothing") is None  # → the config's dataclass defaults
    assert recipe_path("recipes/dpo-tiny.yaml", "sft") == RECIPES_DIR / "dpo-tiny.yaml"
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "dpo-tiny.yaml").write_text("out_dir: mine\n")
    assert recipe_path("recipes/dpo-tiny.yaml", "sft").resolve() == (
        tmp_path / "recipes" / "dpo-tiny.yaml"
    )  # a local file wins


def test_model_hub_id_resolves_through_the_cache(hf_cache, tmp_path, monkeypatch, run):
    monkeypatch.chdir(tmp_path)
    snapshot = hf_cache("Org/Tiny")
    config = run_config(parse("sft", "--model", "Org/Tiny"))
    assert config.model.init_from == str(snapshot)
    code, _, err = run("sft", "--model", "Org/Missing", "--out", "x")
    assert code == 2 and "download it with `huggingface-cli download Org/Missing`" in err
    code, text, _ = run("sft", "--model", "Org/Missing", "--print-config")  # prints the id
    assert code == 0 and yaml.safe_load(text)["model"]["init_from"] == "Org/Missing"


def test_unknown_option_error_names_only_the_unknown_tokens(run):
    """The ``--`` the override mover inserts, and overrides an unknown option strands, are
    not reported as unrecognized (they used to be: "--data -- train.max_steps=1")."""
    code, _, err = run("pretrain", "--bogus", "train.max_steps=1", "--print-config")
    assert code == 2
    assert err.strip().endswith("error: unrecognized arguments: --bogus"), err
    code, _, err = run("sft", "--frob", "x", "optim.lr=1", "--out", "o")
    assert code == 2 and " -- " not in err and "optim.lr=1" not in err and "--frob" in err


def test_pretrain_data_flag_stops_at_the_override(run):
    code, text, err = run("pretrain", "--data", "a.txt", "b.txt", "train.max_steps=1",
                          "--print-config")  # fmt: skip
    assert code == 0, err
    config = yaml.safe_load(text)
    assert config["data"]["paths"] == ["a.txt", "b.txt"] and config["train"]["max_steps"] == 1
