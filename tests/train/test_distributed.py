"""Two CPU processes (gloo): DDP and FSDP2 through the same loop equal one process with the same
global batch; an FSDP checkpoint loads (and resumes) in a single process.

The ranks are launched with ``torchrun --standalone --nproc_per_node 2`` (about 10 s, most of
it importing torch). A ``slow``-marked variant forks them from the test process with
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), which skips the imports and is
handy when working on the distributed code.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import shutil
import socket
import traceback
from pathlib import Path

import pytest
import torch

from lmforge.models.hf import load_model
from lmforge.train.loop import Trainer

CONFTEST = Path(__file__).with_name("conftest.py")
STEPS = 4
TORCHRUN_SCRIPT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dist_test", {test_file!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
module.train_ranks({run!r})
"""


def moe_model(seed=0):
    """deepseek-tiny (8 routed experts in 2 groups + 1 shared, one dense layer), toy vocab."""
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(seed)
    return CausalLM(preset_config("deepseek-tiny", vocab_size=64))


def train_ranks(run: str) -> None:
    """Each process: DDP (micro 4 × accum 1), FSDP2 (micro 2 × accum 2), then an MoE model
    with expert parallelism and with plain DDP (both micro 2 × accum 2) for STEPS steps."""
    from lmforge.train.distributed import init_distributed

    spec = importlib.util.spec_from_file_location("toy", CONFTEST)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert info.world_size == 2
    out = {}
    runs = (("ddp", "ddp", 4, 1), ("fsdp", "fsdp", 2, 2), ("ep", "ddp", 2, 2),
            ("moe-ddp", "ddp", 2, 2))  # fmt: skip
    for name, strategy, micro, accum in runs:
        config = toy.tiny_config(max_steps=STEPS, batch_size=micro, grad_accum=accum,
                                 distributed=strategy, expert_parallel=name == "ep")  # fmt: skip
        loader = toy.ToyLoader(global_batch=8, accum=accum, rank=info.rank, world=info.world_size)
        losses = []
        model = moe_model() if name in ("ep", "moe-ddp") else toy.tiny_model()
        trainer = Trainer(model, loader, config, run_dir=f"{run}/{name}",
                          callbacks=[lambda t, r, losses=losses: losses.append(r["loss"])])  # fmt: skip
        assert trainer.strategy == strategy
        if name == "ep":  # this rank holds 4 of the 8 routed experts of the MoE layer
            own = {n.split(".experts.")[1].split(".")[0] for n, _ in
                   trainer.raw_model.named_parameters() if ".experts." in n}  # fmt: skip
            assert own == {str(e) for e in range(4 * info.rank, 4 * info.rank + 4)}, own
        trainer.fit()
        out[name] = losses
        if name == "ep":  # resume the sharded run from its (full) checkpoint for 2 more steps
            config.train.max_steps = STEPS + 2
            loader = toy.ToyLoader(global_batch=8, accum=accum, rank=info.rank,
                                   world=info.world_size)  # fmt: skip
            resumed = Trainer(moe_model(seed=5), loader, config, run_dir=f"{run}/{name}")
            resumed.fit()
            assert resumed.resumed_from is not None and resumed.step == STEPS + 2
    if info.rank == 0:
        Path(run, "losses.json").write_text(json.dumps(out))
    torch.distributed.destroy_process_group()


def _forked_rank(rank: int, world: int, port: int, run: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    code = 0
    try:
        train_ranks(run)
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)  # never return into the forked copy of pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_forked(run: Path) -> None:
    # Import what the ranks need once, here, so the forked children start warm.
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_forked_rank, args=(r, 2, port, str(run))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]


def _launch_torchrun(run: Path, torchrun) -> None:
    script = run / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(test_file=__file__, run=str(run)))
    torchrun(script, [], timeout=180)


@pytest.fixture(scope="module", params=["torchrun", pytest.param("fork", marks=pytest.mark.slow)])
def torchrun_runs(request, tmp_path_factory, torchrun):
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo not available")
    run = tmp_path_factory.mktemp(f"dist-{request.param}")
    if request.param == "fork":
        _launch_forked(run)
    else:
        _launch_torchrun(run, torchrun)
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


def test_expert_parallel_matches_single_process(torchrun_runs, toy_loader, make_config):
    """`train.expert_parallel`: 2 ranks × 4 experts each (all-to-all, experts outside DDP's
    all-reduce, global expert loads for the bias step) train like one process over the same
    global batch; the checkpoint holds all 8 experts and the optimizer state of all. Plain
    DDP of the same MoE model (experts replicated) matches too."""
    run, losses = torchrun_runs
    single, trainer = _single_process(toy_loader, moe_model, make_config, run_dir=run / "ep1")
    assert losses["ep"] == pytest.approx(single, abs=1e-5)
    assert losses["moe-ddp"] == pytest.approx(single, abs=1e-5)  # replicated experts
    want = trainer.raw_model.state_dict()
    replicated = load_model(run / "moe-ddp" / "checkpoints" / f"step-{STEPS:08d}").state_dict()
    for key, p in want.items():
        torch.testing.assert_close(replicated[key], p, atol=1e-5, rtol=1e-4, msg=key)
    folder = run / "ep" / "checkpoints" / f"step-{STEPS:08d}"
    saved = load_model(folder)
    got = saved.state_dict()
    assert set(got) == set(want) and any(".experts.7." in k for k in got)
    bias = [k for k in want if k.endswith("e_score_correction_bias")]
    assert bias and any(want[k].abs().sum() > 0 for k in bias)  # the bias step ran
    for key, p in want.items():
        torch.testing.assert_close(got[key], p, atol=1e-5, rtol=1e-4, msg=key)
    ref = run / "ep1" / "checkpoints" / f"step-{STEPS:08d}" / "trainer_state"
    from safetensors.torch import load_file

    meta = json.loads((folder / "trainer_state" / "optimizer.json").read_text())
    ref_meta = json.loads((ref / "optimizer.json").read_text())
    assert [g["params"] for g in meta["param_groups"]] == [
        g["params"] for g in ref_meta["param_groups"]
    ]  # the unsharded model's order, so a single process can resume it
    moments = load_file(str(folder / "trainer_state" / "optimizer.safetensors"))
    reference = load_file(str(ref / "optimizer.safetensors"))
    assert set(moments) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(moments[key], value, atol=1e-5, rtol=1e-3, msg=key)


def test_expert_parallel_run_resumes_like_one_process(torchrun_runs, toy_loader, make_config):
    """The sharded ranks resume from the gathered checkpoint (each loads its own experts and
    their optimizer state) and continue exactly as one process resumed from its own."""
    run, _ = torchrun_runs
    config = make_config(max_steps=STEPS, batch_size=8)
    Trainer(moe_model(), toy_loader(global_batch=8), config, run_dir=run / "ep-ref").fit()
    config.train.max_steps = STEPS + 2
    reference = Trainer(moe_model(seed=5), toy_loader(global_batch=8), config,
                        run_dir=run / "ep-ref")  # fmt: skip
    reference.fit()
    assert reference.resumed_from is not None
    saved = load_model(run / "ep" / "checkpoints" / f"step-{STEPS + 2:08d}").state_dict()
    for key, p in reference.raw_model.state_dict().items():
        torch.testing.assert_close(saved[key], p, atol=1e-4, rtol=1e-3, msg=key)


def test_expert_parallel_config_is_checked():
    """n_routed_experts must divide by the world size; only DDP shards experts."""
    from lmforge.config import ConfigError
    from lmforge.train.config import validate
    from lmforge.train.distributed import DistInfo, shard_experts

    with pytest.raises(ConfigError, match=r"n_routed_experts=8, not divisible by .* 3"):
        shard_experts(moe_model(), DistInfo(rank=0, world_size=3))
    owned = shard_experts(moe_model(), DistInfo(rank=1, world_size=4))  # no group needed
    assert owned and all(".experts.2." in n or ".experts.3." in n for n in owned)
    config = tiny_config_for_validation(distributed="fsdp", expert_parallel=True)
    with pytest.raises(ConfigError, match="train.expert_parallel=true needs"):
        validate(config)
    validate(tiny_config_for_validation(distributed="auto", expert_parallel=True))


def tiny_config_for_validation(**train):
    from lmforge.train.config import RunConfig

    config = RunConfig()
    for key, value in train.items():
        setattr(config.train, key, value)
    return config
