"""Checkpoints: atomic saves survive SIGKILL mid-save; pruning; RNG round trip; HF loadable."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import time
import traceback
from pathlib import Path

import torch

from lmforge.models.hf import load_model
from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import Trainer

CONFTEST = Path(__file__).with_name("conftest.py")


def _train_in_child(run: Path) -> None:
    """The victim: a forked copy of this process training 10 steps, saving every 5."""
    code = 0
    try:
        spec = importlib.util.spec_from_file_location("toy", CONFTEST)
        toy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(toy)
        config = toy.tiny_config(max_steps=10, save_every=5)
        Trainer(toy.tiny_model(), toy.ToyLoader(), config, run_dir=run).fit()
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)  # never return into the forked copy of pytest


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, toy_loader, make_model,
                                                        make_config, monkeypatch):  # fmt: skip
    """SIGKILL while step 10 is being saved (paused half-way by the test hook)."""
    run = tmp_path / "run"
    monkeypatch.setenv(ckpt.PAUSE_ENV, "10")
    proc = multiprocessing.get_context("fork").Process(target=_train_in_child, args=(run,))
    proc.start()
    monkeypatch.delenv(ckpt.PAUSE_ENV)
    paused = run / "checkpoints" / ".tmp-step-00000010" / "PAUSED"
    deadline = time.monotonic() + 60
    while not paused.exists():
        assert proc.is_alive(), f"the training process exited early ({proc.exitcode})"
        assert time.monotonic() < deadline, "the save never reached the pause point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL

    root = run / "checkpoints"
    assert (root / ".tmp-step-00000010" / "model.safetensors").is_file()  # half-written
    assert (root / "latest").read_text().strip() == "step-00000005"
    good = ckpt.latest_checkpoint(root)
    assert good.name == "step-00000005" and ckpt.is_complete(good)
    assert load_model(good).config.vocab_size == 64  # an HF folder on its own

    config = make_config(max_steps=10, save_every=5)
    resumed = Trainer(make_model(seed=3), toy_loader(), config, run_dir=run)
    resumed.fit()
    assert resumed.resumed_from == good and resumed.step == 10
    assert not (root / ".tmp-step-00000010").exists()
    straight = Trainer(make_model(), toy_loader(), make_config(max_steps=10))
    straight.fit()
    for p, q in zip(straight.raw_model.parameters(), resumed.raw_model.parameters()):
        assert torch.equal(p, q)


def test_keep_last_and_latest_fallback(tmp_path, toy_loader, make_model, make_config):
    config = make_config(max_steps=6, save_every=1, keep_last=2)
    Trainer(make_model(), toy_loader(), config, run_dir=tmp_path).fit()
    root = tmp_path / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000005", "step-00000006"]
    assert ckpt.latest_checkpoint(root).name == "step-00000006"
    # a damaged newest checkpoint (and a stale pointer) falls back to the previous one
    (root / "step-00000006" / "trainer_state" / "state.json").unlink()
    assert ckpt.latest_checkpoint(root).name == "step-00000005"
    (root / "latest").write_text("step-00000099\n")
    assert ckpt.latest_checkpoint(root).name == "step-00000005"


def test_fsdp_export_of_a_deepseek_model_with_and_without_mtp(tmp_path, monkeypatch):
    """`write_weights`' FSDP branch (a CPU copy rebuilt from the gathered state): an MLA +
    MoE model saves and loads back with equal logits, also when it was built without its
    MTP modules (the copy must not expect them)."""
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    monkeypatch.setattr(ckpt.D, "is_fsdp", lambda model: True)
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    for with_mtp in (True, False):
        torch.manual_seed(0)
        cfg = preset_config("deepseek-tiny", num_nextn_predict_layers=1)
        model = CausalLM(cfg, with_mtp=with_mtp).eval()
        folder = tmp_path / f"mtp-{with_mtp}"
        ckpt.write_weights(model, model.state_dict(), folder)
        loaded = load_model(folder).eval()
        assert (loaded.mtp is not None) == with_mtp
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def _saved(folder):
    import json

    from lmforge.models.hf import read_state_dict

    return read_state_dict(folder), json.loads((folder / "config.json").read_text())


def test_sharded_export_writes_exactly_the_models_parameters(tmp_path, monkeypatch):
    """`write_weights`' FSDP / sharded-expert branch writes what the unsharded save writes —
    for a `CausalLM` (tied and untied head) the same HF files, and for a model with an extra
    head (a critic, a score head) that head too; a gathered state that lacks a parameter of
    the model, or holds one it lacks, is an error naming it (never a silent drop)."""
    import pytest

    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    class WithValueHead(CausalLM):  # e.g. the PPO actor-critic: a CausalLM + more modules
        def __init__(self, config):
            super().__init__(config)
            self.value_head = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, 4),
                                                  torch.nn.Linear(4, 1))  # fmt: skip

    def tiny(cls, tie):
        torch.manual_seed(0)
        cfg = preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=tie)  # fmt: skip
        model = cls(cfg)
        model.generation_config = {"temperature": 0.7}
        return model

    cases = [(CausalLM, False), (CausalLM, True), (WithValueHead, False)]
    for cls, tie in cases:
        model = tiny(cls, tie)
        plain, sharded = tmp_path / f"{cls.__name__}-{tie}", tmp_path / f"{cls.__name__}-{tie}-s"
        ckpt.write_weights(model, {}, plain)  # unsharded: save_model(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with monkeypatch.context() as m:
            m.setattr(ckpt.D, "is_fsdp", lambda model: True)
            ckpt.write_weights(model, state, sharded)
        (want, want_cfg), (got, got_cfg) = _saved(plain), _saved(sharded)
        assert got_cfg == want_cfg and got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
        for name in ("generation_config.json",):
            assert (sharded / name).read_text() == (plain / name).read_text()
        if cls is WithValueHead:  # the extra head is written, every tensor of it
            assert {k for k in got if k.startswith("value_head.")} == {
                f"value_head.{i}.{w}" for i in (0, 1) for w in ("weight", "bias")
            }
        if tie:  # the gathered state may name the tied head once
            state.pop("lm_head.weight")
            assert ckpt.gathered_export(model, state).state_dict().keys() == want.keys() | {
                "lm_head.weight"
            }

    model = tiny(WithValueHead, False)
    state = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"missing from the gathered state: \['value_head.1.bias'"):
        ckpt.gathered_export(model, {k: v for k, v in state.items() if k != "value_head.1.bias"})
    with pytest.raises(ValueError, match=r"not parameters of the model: \['critic.score.weight'"):
        ckpt.gathered_export(model, {**state, "critic.score.weight": torch.zeros(1, 32)})
