"""`lmforge rm`: flags → config → a reward-model run folder, and one-line errors."""

from __future__ import annotations

import pytest
import torch

TINY = ["data.synthetic_docs=40", "data.seq_len=96", "train.batch_size=4", "train.max_steps=2",
        "train.max_time_s=0", "train.eval_every=0", "train.save_every=0", "log.progress=false",
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


def test_rm_writes_a_reward_model(model_dir, tmp_path, run):
    from lmforge.align.preference_objective import load_reward_model

    out = tmp_path / "rm"
    code, text, err = run("rm", "--config", "recipes/rm-tiny.yaml", "--model", str(model_dir),
                          "--out", str(out), *TINY)  # fmt: skip
    assert code == 0, err
    assert "Bradley-Terry" in text and "reward accuracy" in text
    assert load_reward_model(out / "model")(torch.tensor([[5, 6, 7]])).shape == (1,)


def test_rm_needs_a_model(tmp_path, run):
    code, _, err = run("rm", "--config", "recipes/rm-tiny.yaml", "--out", str(tmp_path))
    assert code == 2 and "rm needs a model: --model DIR" in err
    assert "--peft" in run("dpo", "--help")[1] and "--peft" not in run("rm", "--help")[1]
