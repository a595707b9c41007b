"""`train_dpo` end to end on tiny settings: synthetic pairs, resume, a LoRA policy with the
base as reference, and the config checks (``lmforge dpo``: tests/commands/test_dpo.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lmforge.align.dpo_trainer import DPOConfig, DPOSection, train_dpo, validate_dpo
from lmforge.config import ConfigError
from lmforge.peft.settings import PeftSettings
from lmforge.train.config import load_config

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "dpo-tiny.yaml"
TINY = ["data.synthetic_docs=60", "data.seq_len=96", "train.batch_size=4", "train.max_steps=4",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=2", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


def _config(preference_model_dir, out, *overrides) -> DPOConfig:
    extra = [
        f"model.init_from={json.dumps(str(preference_model_dir))}",
        f"out_dir={json.dumps(str(out))}",
    ]
    return load_config(RECIPE, [*TINY, *overrides, *extra], DPOConfig)


def _dpo(config, peft=None) -> tuple[dict, str]:
    console = Console(file=io.StringIO(), width=200)
    summary = train_dpo(config, peft=peft, console=console)
    return summary, console.file.getvalue()


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_end_to_end_and_resume(preference_model_dir, tmp_path):
    out = tmp_path / "dpo"
    summary, text = _dpo(_config(preference_model_dir, out))
    assert "60 synthetic preference pairs" in text and "54 train / 6 validation" in text
    assert "frozen copy" in text and "reward accuracy" in text
    assert summary["model_dir"] == str(out / "model")
    rec = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in rec] == [1, 2, 3, 4]
    assert {"rewards/accuracy", "rewards/margin", "logps/chosen"} <= rec[0].keys()
    (val,) = [r for r in _records(out) if "val_loss" in r]  # preference metrics, no perplexity
    assert {"val_rewards/accuracy", "val_rewards/margin", "val_rewards/chosen",
            "val_rewards/rejected"} <= val.keys() and "val_ppl" not in val  # fmt: skip
    assert summary["validation"]["rewards/accuracy"] == val["val_rewards/accuracy"]
    assert "validation: reward accuracy" in text and "perplexity" not in text
    from lmforge.models.hf import load_model

    trained, base = load_model(out / "model"), load_model(preference_model_dir)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    _, text = _dpo(_config(preference_model_dir, out, "train.max_steps=6"))  # running again resumes
    assert "resumed from" in text
    assert [r["step"] for r in _records(out) if "loss" in r] == list(range(1, 7))


def test_dpo_with_lora_uses_the_base_as_reference(preference_model_dir, tmp_path):
    out = tmp_path / "lora"
    config = _config(
        preference_model_dir, out, "dpo.loss_type=ipo", "dpo.precompute_reference=true"
    )
    _, text = _dpo(config, PeftSettings(method="lora", lora_r=4))
    assert "precomputed" in text and "ipo" in text
    assert (out / "model" / "adapter_config.json").is_file()


def test_dpo_rejects_bad_settings(preference_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="dpo.loss_type"):
        _config(preference_model_dir, tmp_path, "dpo.loss_type=kto")
    with pytest.raises(ValueError, match="needs --peft"):
        _dpo(_config(preference_model_dir, tmp_path, "dpo.reference=adapter"))
    with pytest.raises(ValueError, match="needs --peft"):  # settings without a method
        _dpo(_config(preference_model_dir, tmp_path, "dpo.reference=adapter"), PeftSettings())
    with pytest.raises(ConfigError, match="model.init_from"):
        _dpo(load_config(RECIPE, [*TINY, f"out_dir={json.dumps(str(tmp_path))}"], DPOConfig))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (DPOSection(beta=0), "dpo.beta=0 must be > 0"),
        (DPOSection(label_smoothing=0.5), r"must be in \[0, 0.5\)"),
        (DPOSection(length_groups=0), "dpo.length_groups=0 must be >= 1"),
        (DPOSection(loss_type="ipo", label_smoothing=0.1), "sigmoid or simpo only"),
    ],
)
def test_validate_dpo(section, message):
    with pytest.raises(ConfigError, match=message):
        validate_dpo(section)
    validate_dpo(DPOSection())


def test_dpo_takes_steps_on_a_deepseek_model(tmp_path):
    """An MLA + MoE policy (deepseek-tiny with the preference tokenizer): DPO's first loss is
    ln 2 (policy = frozen reference), then steps change the weights and the saved folder
    loads back as a deepseek_v3 model."""
    import math

    from lmforge.data.tasks.chat import synthetic_chats
    from lmforge.models.hf import load_model, save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train([m["content"] for c in synthetic_chats(200, 0) for m in c], 300)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id)  # fmt: skip
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(CausalLM(preset_config("deepseek-tiny", vocab_size=320, **ids)), base, tokenizer=tok)
    out = tmp_path / "dpo"
    summary, text = _dpo(_config(base, out, "train.max_steps=3", "train.save_every=0"))
    rec = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in rec] == [1, 2, 3]
    assert rec[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(r["loss"]) for r in rec)
    trained, start = load_model(out / "model"), load_model(base)
    assert trained.config.model_type == "deepseek_v3" and trained.config.use_moe
    assert not torch.equal(
        trained.model.layers[1].self_attn.kv_b_proj.weight,
        start.model.layers[1].self_attn.kv_b_proj.weight,
    )
