"""`PeftSettings` + `apply_peft`: which adapter a run trains, and the refusals."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import lmforge
from lmforge.peft import is_peft_model, trainable_parameters
from lmforge.peft.settings import PeftSettings, apply_peft, lora_target_modules


def test_no_method_leaves_the_model_alone(base_dir):
    model = lmforge.load_model(base_dir("llama"))
    assert apply_peft(model, None, "base") is model and not is_peft_model(model)
    assert apply_peft(model, PeftSettings(), "base") is model and not is_peft_model(model)


def test_lora_trains_only_the_targets(base_dir):
    model = lmforge.load_model(base_dir("llama"))
    apply_peft(model, PeftSettings(method="lora", lora_r=4, lora_targets="q_proj,v_proj"), "b")
    names = list(trainable_parameters(model))
    assert names and all(".lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"q_proj", "v_proj"}
    assert model.name_or_path == str(Path("b").resolve()) and model.peft_config["default"].r == 4


def test_dora_and_bottleneck_adapters(base_dir):
    model = lmforge.load_model(base_dir("llama"))
    apply_peft(model, PeftSettings(method="dora", lora_targets="all-linear"), "b")
    assert model.peft_config["default"].use_dora
    model = lmforge.load_model(base_dir("llama"))
    apply_peft(model, PeftSettings(method="adapter", bottleneck=4), "b")
    assert model.peft_config["default"].peft_type == "LMFORGE_BOTTLENECK"


def test_lora_target_modules():
    assert lora_target_modules("q_proj,v_proj") == ["q_proj", "v_proj"]
    assert lora_target_modules("q_proj") == ["q_proj"]
    assert lora_target_modules("all-linear") == "all-linear"
    assert lora_target_modules(("o_proj",)) == ["o_proj"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (PeftSettings(method="dora", quantize="nf4"), "--quantize nf4 needs --peft lora"),
        (PeftSettings(quantize="int8"), "--quantize int8 needs --peft lora"),
        (PeftSettings(method="prefix"), "needs unpacked batches"),
        (PeftSettings(method="prompt"), "needs unpacked batches"),
        (PeftSettings(method="ia3"), "unknown PEFT method 'ia3'"),
    ],
)
def test_refusals(base_dir, settings, message):
    with pytest.raises(ValueError, match=message):
        apply_peft(lmforge.load_model(base_dir("llama")), settings, "b")


def test_defaults_match_the_command_line_flags():
    from lmforge.commands.common import add_peft_arguments, peft_settings

    parser = argparse.ArgumentParser()
    add_peft_arguments(parser)
    assert peft_settings(parser.parse_args([])) == PeftSettings()
    args = parser.parse_args(["--peft", "lora", "--lora-r", "4", "--rslora", "--quantize", "nf4"])
    assert peft_settings(args) == PeftSettings(method="lora", lora_r=4, rslora=True,
                                               quantize="nf4")  # fmt: skip
