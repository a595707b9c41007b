"""A saved flow (config.json + model.safetensors) loads back to the same function."""

import pytest
import torch

from lmforge.config import ConfigError
from lmforge.generative.flow_io import is_flow_folder, read_flow_config, save_flow
from lmforge.generative.flow_training import build_flow, load_flow, sample_flow


@pytest.mark.parametrize(
    "kind,config",
    [("nice", {"shape": [1, 4, 4], "hidden": 8, "hidden_layers": 1, "num_couplings": 2}),
     ("realnvp", {"shape": [1, 4, 4], "hidden": 4, "couplings_per_stage": 1})],
)  # fmt: skip
def test_round_trip(tmp_path, kind, config):
    torch.manual_seed(0)
    model = build_flow(kind, config)
    with torch.no_grad():  # non-trivial weights (the last coupling layers start at zero)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = model.save_weights_folder(tmp_path / "ckpt")  # what the Trainer's checkpoints write
    assert is_flow_folder(folder)
    got_kind, got_config, meta = read_flow_config(folder)
    assert (got_kind, got_config, meta) == (kind, {**model.config.to_dict()}, {})
    save_flow(model, tmp_path / "model", {"dataset": "digits"})
    loaded, meta = load_flow(tmp_path / "model")
    assert meta == {"dataset": "digits"} and not loaded.training
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    assert torch.equal(loaded.log_prob(x), model.eval().log_prob(x))
    assert torch.equal(sample_flow(loaded, 2, seed=1), sample_flow(model, 2, seed=1))
    assert sample_flow(loaded, 2).shape == (2, 1, 4, 4)


def test_not_a_flow_folder(tmp_path):
    assert not is_flow_folder(tmp_path)
    with pytest.raises(ConfigError, match="not a saved flow"):
        load_flow(tmp_path)
    with pytest.raises(ConfigError, match="expected one of nice, realnvp"):
        build_flow("glow", {})
