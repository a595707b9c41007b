"""`train_rm` end to end on tiny settings: a reward model that loads in `transformers` as a
sequence classifier, and resume (``lmforge rm``: tests/commands/test_rm.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from rich.console import Console

from lmforge.align.rm_trainer import RMConfig, train_rm
from lmforge.train.config import load_config

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "rm-tiny.yaml"
TINY = ["data.synthetic_docs=60", "data.seq_len=96", "train.batch_size=4", "train.max_steps=4",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=2", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


def _rm(preference_model_dir, out, *overrides) -> tuple[dict, str]:
    extra = [
        f"model.init_from={json.dumps(str(preference_model_dir))}",
        f"out_dir={json.dumps(str(out))}",
    ]
    config = load_config(RECIPE, [*TINY, "optim.lr=3e-3", *overrides, *extra], RMConfig)
    console = Console(file=io.StringIO(), width=200)
    summary = train_rm(config, console=console)
    return summary, console.file.getvalue()


def test_rm_end_to_end_saves_a_sequence_classifier(preference_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lmforge.align.preference_objective import load_reward_model

    out = tmp_path / "rm"
    summary, text = _rm(preference_model_dir, out)
    assert "Bradley-Terry" in text and "reward accuracy" in text
    assert summary["model_dir"] == str(out / "model")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rec = [r for r in records if "loss" in r]
    assert {"accuracy", "margin", "rewards/chosen"} <= rec[0].keys()
    (val,) = [r for r in records if "val_loss" in r]
    assert {"val_accuracy", "val_margin", "val_rewards/chosen"} <= val.keys()
    assert "val_ppl" not in val and "validation: reward accuracy" in text
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    rm = load_reward_model(out / "model").eval()
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(rm(ids), hf(input_ids=ids).logits.squeeze(-1), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    assert (out / "model" / "tokenizer.json").is_file()
    _, text = _rm(preference_model_dir, out, "train.max_steps=5")
    assert "resumed from" in text
