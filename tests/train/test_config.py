"""Run configs: YAML → dataclasses, validation messages, key=value overrides."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.train.config import ConfigError, RunConfig, dump_config, load_config


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_typed_overrides(tmp_path):
    path = _write(tmp_path, "out_dir: runs/x\noptim:\n  lr: 3e-4\ntrain:\n  max_steps: 7\n")
    cfg = load_config(path, ["train.batch_size=3", "data.paths=[a.txt, b.txt]",
                             "optim.fused=null", "model.overrides.hidden_size=48",
                             "train.precision=bf16"])  # fmt: skip
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # YAML reads 3e-4 as str
    assert cfg.train.max_steps == 7 and cfg.train.batch_size == 3
    assert cfg.data.paths == ["a.txt", "b.txt"] and cfg.optim.fused is None
    assert cfg.model.overrides == {"hidden_size": 48} and cfg.train.precision == "bf16"
    assert load_config(_write(tmp_path, dump_config(cfg))) == cfg  # round trip


def test_unknown_key_lists_valid_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "optim:\n  lrr: 0.1\n"))
    msg = str(err.value)
    assert "c.yaml" in msg and "unknown key 'optim.lrr'" in msg and "did you mean 'lr'" in msg
    assert "valid keys: lr, min_lr_ratio" in msg
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(None, ["trian.max_steps=3"])
    with pytest.raises(ConfigError, match="unknown key 'train.max_step'.*'max_steps'"):
        load_config(None, ["train.max_step=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=ten", "train.max_steps: expected an integer, got 'ten'"),
        ("train.precision=fp4", r"'fp4' is not one of \['auto', 'fp32', 'bf16', 'fp16', 'fp8'\]"),
        ("train.compile=3", "expected true or false"),
        ("train.batch_size=0", "train.batch_size=0 must be > 0"),
        ("optim.lr=-1", "optim.lr=-1.0 must be > 0"),
        ("train", "expected key=value"),
        ("train=3", "train is a section"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:2: invalid YAML"):
        load_config(_write(tmp_path, "train:\n  max_steps: [1\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_needs_a_stopping_condition():
    with pytest.raises(ConfigError, match="at least one of train.max_steps"):
        load_config(None, ["train.max_steps=0"])


@dataclasses.dataclass
class _DPOSection:
    beta: float = 0.1


@dataclasses.dataclass
class _DPOConfig(RunConfig):
    dpo: _DPOSection = dataclasses.field(default_factory=_DPOSection)


def test_subclass_adds_a_validated_section(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("dpo:\n  beta: 0.3\ntrain:\n  max_steps: 7\n")
    config = load_config(path, ["dpo.beta=0.5"], cls=_DPOConfig)
    assert isinstance(config, _DPOConfig) and config.dpo.beta == 0.5
    assert config.train.max_steps == 7
    path.write_text("dpo:\n  betta: 0.3\n")
    with pytest.raises(ConfigError, match="beta"):
        load_config(path, cls=_DPOConfig)
