"""The training loop: exact resume, token-weighted accumulation, NaN stop, checkpointing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.train import checkpoint as ckpt
from lmforge.train.loop import Trainer, TrainingDiverged
from lmforge.train.objective import LossOutput, causal_lm_loss


def _opt_state(trainer):
    return trainer.optimizer.state_dict()["state"]


def _assert_same(a: Trainer, b: Trainer) -> None:
    for (name, p), q in zip(a.raw_model.named_parameters(), b.raw_model.parameters()):
        assert torch.equal(p, q), name
    sa, sb = _opt_state(a), _opt_state(b)
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        for field in sa[key]:
            assert torch.equal(sa[key][field], sb[key][field]), (key, field)


def test_resume_is_bit_exact(tmp_path, toy_loader, make_model, make_config):
    """20 steps straight == 10 steps, a fresh process state resumed from disk, 10 more."""
    config = make_config(max_steps=20, eval_every=0, save_every=10)
    straight = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path / "a")
    straight.fit()

    class Stop(Exception):
        pass

    def stop_at_10(trainer, record):
        if trainer.step == 10:
            raise Stop

    first = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path / "b",
                    callbacks=[stop_at_10])  # fmt: skip
    with pytest.raises(Stop):
        first.fit()
    torch.manual_seed(1234)  # the resumed run must restore RNG state, not rely on ours
    second = Trainer(make_model(seed=7), toy_loader(), config, run_dir=tmp_path / "b")
    summary = second.fit()
    assert second.resumed_from.name == "step-00000010"
    assert summary["step"] == 20 and second.tokens == straight.tokens
    _assert_same(straight, second)
    # metrics.jsonl holds each step exactly once after the resume
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


@pytest.mark.parametrize(("micro", "accum"), [(4, 2), (2, 4)])
def test_invariant_to_batch_size_times_accumulation(micro, accum, toy_loader, make_model,
                                                     make_config):  # fmt: skip
    """Same global batch as 8×1 → same losses and weights (token-weighted, not per-micro)."""
    runs = []
    for b, a in ((8, 1), (micro, accum)):
        config = make_config(max_steps=4, batch_size=b, grad_accum=a)
        trainer = Trainer(make_model(), toy_loader(global_batch=8, accum=a), config)
        losses = [trainer.train_step([next(it) for _ in range(a)])["loss"]
                  for it in [iter(trainer.train_data)] for _ in range(4)]  # fmt: skip
        runs.append((losses, trainer))
    (l1, t1), (l2, t2) = runs
    assert l1 == pytest.approx(l2, abs=1e-5)
    for p, q in zip(t1.raw_model.parameters(), t2.raw_model.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4)


def test_per_micro_batch_mean_would_differ(toy_loader):
    """Guard for the test above: micro-batches really carry different token counts."""
    it = iter(toy_loader(global_batch=8, accum=4))
    counts = [int(next(it)["num_loss_tokens"]) for _ in range(4)]
    assert len(set(counts)) > 1


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, toy_loader, make_model,
                                                        make_config):  # fmt: skip
    def objective(model, batch):
        out = causal_lm_loss(model, batch)
        if trainer.step == 6:  # the 7th step diverges
            return LossOutput(out.loss_sum * float("nan"), out.count)
        return out

    config = make_config(max_steps=10, save_every=5)
    trainer = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path, objective=objective)
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match=r"step 7: loss is nan.*step-00000005"):
        trainer.fit()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-00000005"
    assert trainer.step == 6
    # the failed step did not touch the weights
    assert any(not torch.equal(before[k], v) for k, v in trainer.raw_model.state_dict().items())
    after_6 = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    with pytest.raises(TrainingDiverged):
        trainer.train_step([next(iter(trainer.train_data))])
    for k, v in trainer.raw_model.state_dict().items():
        assert torch.equal(after_6[k], v), k


def test_gradient_checkpointing_same_gradients(toy_loader, make_model):
    batch = next(iter(toy_loader()))
    grads = []
    for every in (0, 1, 2):
        model = make_model(num_hidden_layers=3)
        model.model.gradient_checkpointing = every
        model.train()
        causal_lm_loss(model, batch).loss_sum.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        for g, h in zip(grads[0], other):
            torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_selects_every_kth_block(make_model):
    model = make_model(num_hidden_layers=4).train()
    model.model.gradient_checkpointing = 2
    assert [model.model.checkpointed(i) for i in range(4)] == [True, False, True, False]
    model.eval()
    assert not model.model.checkpointed(0)


def test_stops_on_max_tokens_and_evaluates(tmp_path, toy_loader, make_model, make_config):
    config = make_config(max_steps=0, max_tokens=16 * 8 * 5, eval_every=2, eval_batches=2)
    config.log.plot = True
    trainer = Trainer(make_model(), toy_loader(), config, val_data=toy_loader(seed=5),
                      run_dir=tmp_path)  # fmt: skip
    summary = trainer.fit()
    assert summary["stop_reason"] == "max_tokens" and summary["step"] == 5
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 5]
    assert (tmp_path / "training.png").stat().st_size > 1000
    # evaluation is deterministic: the same batches every time
    assert trainer.evaluate() == trainer.evaluate()


def test_training_reduces_loss(toy_loader, make_model, make_config):
    config = make_config(max_steps=30)
    trainer = Trainer(make_model(), toy_loader(), config, val_data=toy_loader(seed=3))
    before = trainer.evaluate()["val_loss"]
    trainer.fit()
    assert trainer.evaluate()["val_loss"] < before - 0.5


def test_bf16_autocast_on_cpu_tracks_fp32(toy_loader, make_model, make_config):
    """precision=bf16 autocasts the matmuls (weights and optimizer stay fp32)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        config = make_config(max_steps=3, precision=precision)
        trainer = Trainer(make_model(), toy_loader(), config)
        assert trainer.precision == precision
        losses[precision] = trainer.fit()["loss"]
        assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert losses["bf16"] != losses["fp32"]


def test_fp16_needs_cuda(toy_loader, make_model, make_config):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(make_model(), toy_loader(), make_config(precision="fp16", device="cpu"))


@pytest.mark.slow
def test_torch_compile_matches_eager(toy_loader, make_model, make_config):
    runs = []
    for compile_ in (False, True):
        trainer = Trainer(make_model(), toy_loader(), make_config(max_steps=3, compile=compile_))
        runs.append(trainer.fit()["loss"])
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)


def test_resume_with_a_different_model_is_a_clear_error(tmp_path, toy_loader, make_model,
                                                         make_config):  # fmt: skip
    Trainer(make_model(), toy_loader(), make_config(max_steps=1), run_dir=tmp_path).fit()
    other = Trainer(make_model(hidden_size=48), toy_loader(), make_config(max_steps=2),
                    run_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="cannot resume this run from it.*train.resume=false"):
        other.fit()


def test_infinite_gradient_stops_before_the_update(toy_loader, make_model, make_config):
    trainer = Trainer(make_model(), toy_loader(), make_config(max_steps=2))
    weight = trainer.raw_model.model.layers[0].mlp.up_proj.weight
    weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))  # loss stays finite
    before = [p.clone() for p in trainer.raw_model.parameters()]
    with pytest.raises(TrainingDiverged, match="step 1: gradient norm is inf at loss 4"):
        trainer.fit()
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.raw_model.parameters()))


def test_objective_metrics_are_logged_as_global_means(toy_loader, make_model, make_config):
    """A custom objective plugs in; its metric sums are divided by the global unit count."""

    def objective(model, batch):
        out = causal_lm_loss(model, batch)
        n = out.count
        return LossOutput(
            out.loss_sum, n, metrics={"twice": 2 * n, "first_id": batch["input_ids"][0, 0]}
        )

    config = make_config(max_steps=1, batch_size=4, grad_accum=2)
    loader = toy_loader(global_batch=8, accum=2)
    trainer = Trainer(make_model(), loader, config, objective=objective)
    it = iter(loader)
    batches = [next(it) for _ in range(2)]
    stats = trainer.train_step(batches)
    count = sum(int(b["num_loss_tokens"]) for b in batches)
    assert stats["loss_tokens"] == count and stats["twice"] == pytest.approx(2.0)
    first = sum(int(b["input_ids"][0, 0]) for b in batches)
    assert stats["first_id"] == pytest.approx(first / count)


def test_finite_data_stops_cleanly(tmp_path, toy_loader, make_model, make_config):
    batches = [b for b, _ in zip(toy_loader(), range(3))]
    summary = Trainer(make_model(), batches, make_config(max_steps=10), run_dir=tmp_path).fit()
    assert summary["stop_reason"] == "data_exhausted" and summary["step"] == 3
    assert summary["checkpoint"].endswith("step-00000003")


def test_stops_on_wall_time_with_a_final_checkpoint(tmp_path, toy_loader, make_model,
                                                    make_config):  # fmt: skip
    config = make_config(max_steps=0, max_time_s=0.3)
    summary = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path).fit()
    assert summary["stop_reason"] == "max_time_s" and summary["step"] >= 1
    assert 0.3 <= summary["elapsed_s"] < 5
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == f"step-{summary['step']:08d}"


def test_no_resume_starts_over_and_keeps_the_old_checkpoints_aside(tmp_path, toy_loader,
                                                                   make_model, make_config):  # fmt: skip
    Trainer(make_model(), toy_loader(), make_config(max_steps=3), run_dir=tmp_path).fit()
    config = make_config(max_steps=2, resume=False)
    config.optim.lr = 5e-3  # would be refused by a resume
    trainer = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path)
    assert trainer.fit()["step"] == 2 and trainer.resumed_from is None
    (moved,) = tmp_path.glob("checkpoints.replaced-*")
    assert [p.name for p in ckpt.list_checkpoints(moved)] == ["step-00000003"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]


def _saved_activation_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward during one forward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss(model, batch)
    return total


def test_gradient_checkpointing_saves_activation_memory(toy_loader, make_model):
    batch = next(iter(toy_loader(global_batch=4, seq_len=32)))
    sizes = {}
    for every in (0, 2, 1):
        model = make_model(num_hidden_layers=4).train()
        model.model.gradient_checkpointing = every
        sizes[every] = _saved_activation_bytes(model, batch)
    assert sizes[1] < sizes[2] < sizes[0]
    assert sizes[1] < 0.6 * sizes[0]  # every block: only block inputs are kept


def test_config_turns_on_gradient_checkpointing(toy_loader, make_model, make_config):
    losses = []
    for every in (0, 2):
        trainer = Trainer(make_model(num_hidden_layers=4), toy_loader(),
                          make_config(max_steps=3, gradient_checkpointing=every))  # fmt: skip
        assert trainer.raw_model.model.gradient_checkpointing == every
        losses.append(trainer.fit()["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_chunked_loss_trains_like_the_full_loss(toy_loader, make_model, make_config):
    """train.loss_chunk_size only changes how the loss is computed, not the run."""
    states = []
    for chunk in (0, 7):
        trainer = Trainer(
            make_model(), toy_loader(), make_config(max_steps=3, loss_chunk_size=chunk)
        )
        trainer.fit()
        states.append(trainer.raw_model.state_dict())
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_a_groups_lr_scale_multiplies_the_schedules_lr(
    tmp_path, toy_loader, make_model, make_config
):
    config = make_config(max_steps=2, eval_every=0, save_every=0)
    trainer = Trainer(make_model(), toy_loader(), config, run_dir=tmp_path,
                      lr_scales={"layers.0.": 5.0})  # fmt: skip
    trainer.fit()
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in trainer.optimizer.param_groups}
    assert set(lrs) == {1.0, 5.0} and lrs[1.0] > 0
    assert lrs[5.0] == pytest.approx(5.0 * lrs[1.0])
