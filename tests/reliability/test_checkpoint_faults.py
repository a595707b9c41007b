"""Fault injection on training checkpoints: bit flips, truncation, header damage, missing
files and a deleted ``trainer_state/`` each end in a named fallback (the newest checkpoint
that verifies; the result bit-identical to an undisturbed run) or a named refusal — never a
silent wrong run. (README "Guarantees": verified resume.)"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.models.weights_check import WeightsError
from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import Trainer
from lmforge.train.manifest import CheckpointCorrupt, write_manifest
from lmforge.train.resume_rules import ResumeRefused

_spec = importlib.util.spec_from_file_location(
    "train_conftest", Path(__file__).parents[1] / "train" / "conftest.py"
)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


class Killed(Exception):
    pass


def _trainer(run_dir, max_steps, seed=0, callbacks=()):
    config = toy.tiny_config(max_steps=max_steps, save_every=2, keep_last=2)
    return Trainer(toy.tiny_model(seed=seed), toy.ToyLoader(), config, run_dir=run_dir,
                   callbacks=list(callbacks))  # fmt: skip


def _kill_after_4(trainer, record):
    if trainer.step == 4:
        raise Killed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 6-step run killed after saving steps 2 and 4, and the weights of the same run
    trained to step 6 undisturbed."""
    base = tmp_path_factory.mktemp("faults")
    with pytest.raises(Killed):
        _trainer(base / "run", 6, callbacks=[_kill_after_4]).fit()
    straight = _trainer(None, 6)
    straight.fit()
    return base / "run", [p.detach().clone() for p in straight.raw_model.parameters()]


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10:14] = b"}}}}"
    path.write_bytes(bytes(data))


FAULTS = {  # name → (damage step-4, the file the report must name)
    "bit flip in the weights": (lambda c: _flip_bit(c / "model.safetensors", -1000),
                                "model.safetensors: SHA-256 differs"),
    "truncated optimizer state": (lambda c: _truncate(c / "trainer_state/optimizer.safetensors"),
                                  "trainer_state/optimizer.safetensors: "),
    "damaged weights header": (lambda c: _damage_header(c / "model.safetensors"),
                               "model.safetensors: SHA-256 differs"),
    "missing state.json": (lambda c: (c / "trainer_state/state.json").unlink(),
                           "trainer_state/state.json: missing"),
    "deleted trainer_state/": (lambda c: shutil.rmtree(c / "trainer_state"),
                               "the folder trainer_state/ is missing"),
    "no manifest (unfinished save)": (lambda c: (c / "manifest.json").unlink(),
                                      "no manifest.json"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_newest_checkpoint_falls_back_by_name(fault, runs, tmp_path, capsys):
    run, expected = runs
    shutil.copytree(run, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    damage, named = FAULTS[fault]
    damage(root / "step-00000004")

    trainer = _trainer(tmp_path / "run", 6, seed=5)
    trainer.fit()
    out = " ".join(capsys.readouterr().out.split())
    assert "checkpoint step-00000004 is damaged" in out and named in out
    assert "moved to bad-step-00000004, resuming from step-00000002" in out
    assert trainer.resumed_from.name == "step-00000002"
    assert (root / "bad-step-00000004").is_dir()  # kept for inspection
    for p, q in zip(trainer.raw_model.parameters(), expected, strict=True):
        assert torch.equal(p, q)  # the same weights as the undisturbed run


def test_no_checkpoint_verifies_refuses_with_the_options(runs, tmp_path):
    run, _ = runs
    shutil.copytree(run, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    _flip_bit(root / "step-00000004" / "model.safetensors", 3000)
    shutil.rmtree(root / "step-00000002" / "trainer_state")
    with pytest.raises(ResumeRefused) as err:
        _trainer(tmp_path / "run", 6).fit()
    text = str(err.value)
    assert "no checkpoint verifies" in text
    assert "step-00000004: model.safetensors: SHA-256 differs" in text
    assert (
        "step-00000002: trainer_state/optimizer.json: the folder trainer_state/ is missing" in text
    )
    assert "train.resume=false" in text and "--out" in text and "model.init_from=" in text
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "step-00000002", "step-00000004"]  # nothing moved when refusing  # fmt: skip
    # train.resume=false starts over: the run trains from step 0 and matches the straight run
    trainer = _trainer(tmp_path / "run", 6)
    trainer.config.train.resume = False
    assert trainer.fit()["step"] == 6 and trainer.resumed_from is None


def test_an_explicit_checkpoint_is_verified_too(runs, tmp_path):
    run, _ = runs
    shutil.copytree(run, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-00000002"
    _truncate(path / "model.safetensors")
    with pytest.raises(CheckpointCorrupt, match="step-00000002: model.safetensors: .* bytes"):
        _trainer(tmp_path / "other", 6).resume(path)


def test_non_finite_weights_saved_with_a_valid_manifest_are_not_trained_on(runs, tmp_path):
    """Bits changed before the manifest was written (a faulty host): the weights check on load
    still names the tensor."""
    from safetensors.torch import load_file, save_file

    run, _ = runs
    shutil.copytree(run, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-00000004"
    state = load_file(path / "model.safetensors")
    state["model.norm.weight"][0] = float("nan")
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    write_manifest(path, 4)
    with pytest.raises(WeightsError, match=r"'model.norm.weight' has 1 non-finite"):
        _trainer(tmp_path / "run", 6).fit()
    assert ckpt.is_complete(path)
