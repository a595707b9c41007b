"""`lmforge dpo` / `lmforge rm` end to end on tiny settings (in-process CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.cli import main

TINY = ["data.synthetic_docs=60", "data.seq_len=96", "train.batch_size=4", "train.max_steps=4",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=2", "log.progress=false",
        "log.plot=false", "data.val_fraction=0.1"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lmforge.data.tasks.chat import synthetic_chats
    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.train([m["content"] for c in synthetic_chats(200, 0) for m in c], 300)
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=320, hidden_size=32, intermediate_size=64,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("base") / "model"
    save_model(CausalLM(cfg), out, tokenizer=tok)
    return out


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_end_to_end_and_resume(model_dir, tmp_path, capsys):
    out = tmp_path / "dpo"
    args = ["dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(model_dir),
            "--out", str(out), *TINY]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "60 synthetic preference pairs" in text and "54 train / 6 validation" in text
    assert "frozen copy" in text and "reward accuracy" in text
    rec = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in rec] == [1, 2, 3, 4]
    assert {"rewards/accuracy", "rewards/margin", "logps/chosen"} <= rec[0].keys()
    from lmforge.models.hf import load_model

    trained, base = load_model(out / "model"), load_model(model_dir)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert main([*args, "train.max_steps=6"]) == 0  # running again resumes
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in _records(out) if "loss" in r] == list(range(1, 7))


def test_dpo_with_lora_uses_the_base_as_reference(model_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    status = main(["dpo", "--config", "recipes/dpo-tiny.yaml", "--model", str(model_dir),
                   "--out", str(out), "--peft", "lora", "--lora-r", "4", "dpo.loss_type=ipo",
                   "dpo.precompute_reference=true", *TINY])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert "precomputed" in text and "ipo" in text
    assert (out / "model" / "adapter_config.json").is_file()


def test_dpo_rejects_bad_settings(model_dir, tmp_path, capsys):
    base = ["dpo", "--config", "recipes/dpo-tiny.yaml", "--out", str(tmp_path)]
    assert main(base) == 2
    assert "needs a model" in capsys.readouterr().err
    assert main([*base, "--model", str(model_dir), "dpo.loss_type=kto"]) == 2
    assert "dpo.loss_type" in capsys.readouterr().err
    assert main([*base, "--model", str(model_dir), "dpo.reference=adapter"]) == 2
    assert "needs --peft" in capsys.readouterr().err


def test_rm_end_to_end_saves_a_sequence_classifier(model_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from lmforge.align.preference_objective import load_reward_model

    out = tmp_path / "rm"
    status = main(["rm", "--config", "recipes/rm-tiny.yaml", "--model", str(model_dir),
                   "--out", str(out), *TINY, "optim.lr=3e-3"])  # fmt: skip
    text = capsys.readouterr().out
    assert status == 0, text
    assert "Bradley-Terry" in text and "reward accuracy" in text
    rec = [r for r in _records(out) if "loss" in r]
    assert {"accuracy", "margin", "rewards/chosen"} <= rec[0].keys()
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    rm = load_reward_model(out / "model").eval()
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(rm(ids), hf(input_ids=ids).logits.squeeze(-1), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    assert (out / "model" / "tokenizer.json").is_file()
    assert main(["rm", "--config", "recipes/rm-tiny.yaml", "--model", str(model_dir),
                 "--out", str(out), *TINY, "optim.lr=3e-3", "train.max_steps=5"]) == 0  # fmt: skip
    assert "resumed from" in capsys.readouterr().out
