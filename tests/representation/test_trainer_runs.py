"""The Trainer plumbing of the foundations runs: a position-indexed loader, weights saved
through the checkpoint hook, and a killed run resuming to the uninterrupted run's weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.representation.trainer_runs import MeanLoss, PositionLoader, SavedNet, fit_net
from lmforge.train.loop import Trainer


def regression_batches() -> PositionLoader:
    def make(i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(8, 3, generator=g)
        return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5])}

    return PositionLoader(make)


def mse(net, batch):
    return ((net(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean(), {"abs": 0.0}


def kill_at(monkeypatch, step):
    """Trainer.train_step raises before optimizer step ``step`` (a killed process)."""
    original = Trainer.train_step

    def train_step(self, batches):
        if self.step + 1 == step:
            raise KeyboardInterrupt("killed")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_position_loader_is_a_function_of_its_position():
    a, b = regression_batches(), regression_batches()
    first = [next(it) for it in [iter(a)] for _ in range(3)]
    b.load_state_dict({"position": 2})
    assert a.state_dict() == {"position": 3}
    assert torch.equal(next(iter(b))["x"], first[2]["x"])


def test_saved_net_writes_config_and_weights(tmp_path):
    net = SavedNet(nn.Linear(3, 2), {"method": "probe"})
    net.save_weights_folder(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"method": "probe"}
    assert torch.equal(load_file(tmp_path / "model.safetensors")["net.weight"], net.net.weight)
    out = MeanLoss(mse)(net, {"x": torch.ones(2, 3), "y": torch.zeros(2)})
    assert out.count == 1 and set(out.metrics) == {"abs"}


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    def run(folder):
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        fit_net(net, {"method": "regression"}, regression_batches(), mse, folder, steps=6,
                lr=0.05, save_every=2, progress=False)  # fmt: skip
        return net

    whole = run(tmp_path / "whole")
    with monkeypatch.context() as m:
        kill_at(m, 4)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed")
    assert (tmp_path / "killed/checkpoints/step-00000002").is_dir()
    resumed = run(tmp_path / "killed")
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "killed/metrics.jsonl").open())]
    assert steps == [1, 2, 3, 4, 5, 6]
    # training moved the weights (the comparison above is not of two untrained nets)
    torch.manual_seed(0)
    assert not torch.equal(nn.Linear(3, 1).weight, whole.weight)


def test_fit_net_is_the_plain_adam_loop_of_train_embedding(tmp_path):
    """Constant lr, no warmup / weight decay / clipping: the Trainer's step is torch's Adam,
    so the run's figures mean what the plain loop's did."""
    from lmforge.representation.margin_softmax import margin_loss
    from lmforge.representation.verification import (
        EmbeddingNet,
        synthetic_identities,
        train_embedding,
    )

    reference, _ = train_embedding("arcface", steps=5, seed=0)
    x, y = synthetic_identities(40, 20, seed=0)
    torch.manual_seed(0)
    net = EmbeddingNet(x.shape[1], classes=40)
    fit_net(net, {"method": "arcface"}, PositionLoader(lambda i: {"x": x, "y": y}),
            lambda m, b: (margin_loss("arcface", m(b["x"]), m.weights, b["y"])[1], {}),
            tmp_path, steps=5, lr=3e-3, progress=False)  # fmt: skip
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=1e-6, atol=1e-7)
