"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 through the same loop equal one process
with the same global batch; an FSDP checkpoint loads (and resumes) in a single process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.models.hf import load_model
from lmforge.train.loop import Trainer

CONFTEST = Path(__file__).with_name("conftest.py")
STEPS = 4
SCRIPT = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("toy", {conftest!r})
toy = importlib.util.module_from_spec(spec); spec.loader.exec_module(toy)
from lmforge.train.distributed import init_distributed
from lmforge.train.loop import Trainer
torch.set_num_threads(1)
info = init_distributed("cpu")
out = {{}}
for name, strategy, micro, accum in (("ddp", "ddp", 4, 1), ("fsdp", "fsdp", 2, 2)):
    config = toy.tiny_config(max_steps={steps}, batch_size=micro, grad_accum=accum,
                             distributed=strategy)
    loader = toy.ToyLoader(global_batch=8, accum=accum, rank=info.rank, world=info.world_size)
    losses = []
    trainer = Trainer(toy.tiny_model(), loader, config, run_dir={run!r} + "/" + name,
                      callbacks=[lambda t, r: losses.append(r["loss"])])
    assert trainer.strategy == strategy
    trainer.fit()
    out[name] = losses
if info.rank == 0:
    with open({run!r} + "/losses.json", "w") as f:
        json.dump(out, f)
torch.distributed.destroy_process_group()
"""


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() or not torch.distributed.is_gloo_available():
        pytest.skip("torchrun / gloo not available")
    run = tmp_path_factory.mktemp("dist")
    script = run / "train.py"
    script.write_text(SCRIPT.format(conftest=str(CONFTEST), run=str(run), steps=STEPS))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads((run / "losses.json").read_text())


def _single_process(toy_loader, make_model, make_config, run_dir=None):
    losses = []
    config = make_config(max_steps=STEPS, batch_size=8)
    trainer = Trainer(make_model(), toy_loader(global_batch=8), config, run_dir=run_dir,
                      callbacks=[lambda t, r: losses.append(r["loss"])])  # fmt: skip
    trainer.fit()
    return losses, trainer


def test_ddp_and_fsdp_match_single_process(torchrun_runs, toy_loader, make_model, make_config):
    run, losses = torchrun_runs
    single, trainer = _single_process(toy_loader, make_model, make_config)
    assert len(single) == STEPS and single[0] != single[-1]
    assert losses["ddp"] == pytest.approx(single, abs=1e-5)
    assert losses["fsdp"] == pytest.approx(single, abs=1e-5)  # also 2 × 2 micro-batches
    for name in ("ddp", "fsdp"):
        saved = load_model(run / name / "checkpoints" / f"step-{STEPS:08d}")
        for (key, p), q in zip(trainer.raw_model.named_parameters(), saved.parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")


def test_fsdp_checkpoint_resumes_in_one_process(torchrun_runs, tmp_path, toy_loader, make_model,
                                                make_config):  # fmt: skip
    """Optimizer state gathered from FSDP shards continues training as the single run would."""
    run, _ = torchrun_runs
    shutil.copytree(run / "fsdp" / "checkpoints", tmp_path / "checkpoints")
    config = make_config(max_steps=STEPS + 2, batch_size=8)
    resumed = Trainer(make_model(seed=5), toy_loader(global_batch=8), config, run_dir=tmp_path)
    with pytest.raises(ValueError, match="saved by 2 process"):
        resumed.resume()
    resumed.resume(restore_data=False)
    assert resumed.step == STEPS
    resumed.train_data.load_state_dict({"position": STEPS})  # one global batch per step
    resumed.fit()
    # reference: the same 4 steps in one process, checkpointed, resumed with the same config
    _single_process(toy_loader, make_model, make_config, run_dir=tmp_path / "ref")
    reference = Trainer(make_model(seed=5), toy_loader(global_batch=8), config,
                        run_dir=tmp_path / "ref")  # fmt: skip
    reference.fit()
    assert reference.resumed_from is not None and reference.step == STEPS + 2
    for p, q in zip(reference.raw_model.parameters(), resumed.raw_model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-3)
