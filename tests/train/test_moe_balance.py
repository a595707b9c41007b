"""Auxiliary-loss-free balancing: the update b_i += γ·sign(mean load − load_i) and MaxVio by
hand, a skewed router driven to balance, and the Trainer's per-step hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.nn.moe import DeepSeekMoE
from lmforge.train.moe_balance import (
    bias_update,
    has_moe,
    max_violation,
    moe_layers,
    update_correction_bias,
)


class LoadOnly(nn.Module):
    """The agreed interface without routing: the two buffers on one module."""

    def __init__(self, load):
        super().__init__()
        self.register_buffer("e_score_correction_bias", torch.zeros(len(load)))
        self.register_buffer("expert_load", torch.tensor(load, dtype=torch.float32))


def test_update_rule_and_maxvio_by_hand():
    """Loads [10, 2, 6, 6]: mean 6 → signs [−1, +1, 0, 0]; MaxVio = 10/6 − 1."""
    load = torch.tensor([10.0, 2.0, 6.0, 6.0])
    torch.testing.assert_close(bias_update(load, 0.01), torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    assert float(max_violation(load)) == pytest.approx(10 / 6 - 1)
    assert float(max_violation(torch.zeros(4))) == 0.0  # nothing routed
    torch.testing.assert_close(
        max_violation(torch.tensor([[1.0, 1.0], [3.0, 1.0]])).float(), torch.tensor([0.0, 0.5])
    )

    model = nn.ModuleDict({"a": LoadOnly([10, 2, 6, 6]), "b": LoadOnly([1, 1, 1, 5])})
    model["b"].e_score_correction_bias.fill_(0.5)
    violations = update_correction_bias(model, gamma=0.01)
    assert violations == pytest.approx({"a": 10 / 6 - 1, "b": 5 / 2 - 1})
    torch.testing.assert_close(
        model["a"].e_score_correction_bias, torch.tensor([-0.01, 0.01, 0, 0])
    )
    torch.testing.assert_close(model["b"].e_score_correction_bias,
                               torch.tensor([0.51, 0.51, 0.51, 0.49]))  # fmt: skip
    assert all(float(m.expert_load.abs().sum()) == 0 for m in model.values())  # reset
    assert update_correction_bias(nn.Linear(2, 2), 0.01) == {} and not has_moe(nn.Linear(2, 2))


def test_reduce_uses_the_global_load():
    """Under data parallelism the signs come from the load summed over ranks."""
    layer = LoadOnly([4, 0, 2, 2])  # this rank: expert 0 overloaded
    other_rank = torch.tensor([0.0, 8.0, 2.0, 2.0], dtype=torch.float64)
    violations = update_correction_bias(layer, 1.0, reduce=lambda t: t + other_rank)
    # global load [4, 8, 4, 4], mean 5 → [+1, −1, +1, +1]
    torch.testing.assert_close(layer.e_score_correction_bias, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    assert violations[""] == pytest.approx(8 / 5 - 1)


def skewed_moe(seed: int = 0) -> tuple[DeepSeekMoE, torch.Tensor]:
    """8 experts, top-2: experts 0 and 1 have centroids along the inputs' mean direction, so
    without a bias they take nearly every token."""
    torch.manual_seed(seed)
    moe = DeepSeekMoE(16, 8, n_routed_experts=8, num_experts_per_tok=2)
    direction = torch.randn(16)
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.1)
        moe.gate.weight[:2] += direction / direction.norm()
    return moe, direction


def routed_maxvio(moe: DeepSeekMoE, direction: torch.Tensor, steps: int, gamma: float):
    g = torch.Generator().manual_seed(1)
    history = []
    moe.train()
    for _ in range(steps):
        with torch.no_grad():
            moe(torch.randn(512, 16, generator=g) + 2 * direction)
        history.append(update_correction_bias(moe, gamma)[""])
    return history


def test_skewed_router_becomes_balanced():
    moe, direction = skewed_moe()
    assert [name for name, _ in moe_layers(moe)] == [""]  # bias found on the router
    history = routed_maxvio(moe, direction, 150, gamma=0.005)
    assert history[0] > 2.0  # experts 0 and 1 take (nearly) everything: MaxVio → 3
    late = sum(history[-20:]) / 20  # (the sign rule keeps the bias oscillating by ±γ)
    assert late < 1.0 and late < history[0] / 3
    bias = moe.gate.e_score_correction_bias
    assert bias[:2].max() < bias[2:].min()  # the favourites were pushed below the rest

    fixed, direction = skewed_moe()  # γ = 0: loads measured and reset, the bias never moves
    history = routed_maxvio(fixed, direction, 20, gamma=0.0)
    assert min(history) > 2.0 and float(fixed.gate.e_score_correction_bias.abs().sum()) == 0


class Batches:
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            ids = torch.randint(0, 256, (4, 16), generator=g)
            yield {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize("gamma", [0.01, 0.0])
def test_trainer_updates_the_bias_after_each_step(gamma):
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.train.config import RunConfig
    from lmforge.train.loop import Trainer

    torch.manual_seed(0)
    model = CausalLM(preset_config("deepseek-tiny"))
    config = RunConfig()
    config.train.moe_bias_update_speed = gamma
    config.log.progress = False
    trainer = Trainer(model, Batches(), config)
    (name, moe), = moe_layers(model)  # fmt: skip
    it = iter(trainer.train_data)
    for step in range(1, 4):
        record = trainer.train_step([next(it)])
        assert record["moe_maxvio"] > 0
        assert float(moe.expert_load.abs().sum()) == 0  # read and reset after the step
        bias = moe.gate.e_score_correction_bias
        steps_taken = bias / gamma if gamma else bias
        if gamma:  # each step moves each expert by −γ, 0 or +γ
            torch.testing.assert_close(steps_taken, steps_taken.round(), atol=1e-4, rtol=0)
            assert steps_taken.abs().max() <= step and steps_taken.abs().sum() > 0
        else:
            assert float(bias.abs().sum()) == 0
