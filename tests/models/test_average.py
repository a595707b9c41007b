"""Model soups and their extrapolation (`lmforge.models.average`) against the equations
computed here: θ = Σ w_i θ_i, θ_α = θ_0 + α(θ − θ_0); HF folders averaged end to end."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.models.average import (
    average_state_dicts,
    load_averaged,
    scale_from_start,
    soup_weights,
)
from lmforge.models.hf import CheckpointError, save_model
from lmforge.models.presets import preset_config


def _state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g).to(dtype), "b": torch.randn(4, generator=g).to(dtype),
            "steps": torch.tensor([7, 9])}  # fmt: skip


def test_soup_weights_uniform_normalised_and_refused():
    assert soup_weights(4) == [0.25] * 4
    assert soup_weights(2, [1, 3]) == [0.25, 0.75]
    for n, w in ((2, [1.0]), (2, [1.0, -1.0]), (2, [0.0, 0.0]), (0, None)):
        with pytest.raises(ValueError):
            soup_weights(n, w)


def test_average_is_the_weighted_sum_and_keeps_dtypes():
    a, b, c = _state(0), _state(1), _state(2)
    out = average_state_dicts([a, b, c], [1, 1, 2])
    for key in ("w", "b"):
        want = 0.25 * a[key].double() + 0.25 * b[key].double() + 0.5 * c[key].double()
        torch.testing.assert_close(out[key], want.float())
    assert torch.equal(out["steps"], a["steps"])
    half = average_state_dicts([_state(0, torch.bfloat16), _state(1, torch.bfloat16)])
    assert half["w"].dtype == torch.bfloat16
    want = (_state(0, torch.bfloat16)["w"].double() + _state(1, torch.bfloat16)["w"].double()) / 2
    torch.testing.assert_close(half["w"], want.to(torch.bfloat16))


def test_mismatched_states_name_the_tensor_and_model():
    a = _state(0)
    with pytest.raises(CheckpointError, match=r"run-b.*missing \['b'\]"):
        average_state_dicts([a, {k: v for k, v in _state(1).items() if k != "b"}], names=["run-a", "run-b"])  # fmt: skip
    with pytest.raises(CheckpointError, match=r"model 1: tensor w is \(4, 3\)"):
        average_state_dicts([a, {**_state(1), "w": torch.zeros(4, 3)}])
    with pytest.raises(CheckpointError, match="non-float tensor steps"):
        average_state_dicts([a, {**_state(1), "steps": torch.tensor([7, 8])}])


def test_scale_from_start_interpolates_and_extrapolates():
    start, end = _state(0), _state(1)
    for alpha in (0.0, 0.5, 1.0, 1.5):
        out = scale_from_start(start, end, alpha)
        torch.testing.assert_close(out["w"], start["w"] + alpha * (end["w"] - start["w"]))
    torch.testing.assert_close(scale_from_start(start, end, 0.0)["b"], start["b"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    torch.manual_seed(0)
    base = lmforge.CausalLM(preset_config("tiny", eos_token_id=1, bos_token_id=0)).eval()
    save_model(base, root / "start")
    for i in range(3):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.01 * (i + 1) * torch.randn_like(p))
        save_model(base, root / f"m{i}")
    return root


def test_load_averaged_matches_the_folders_weights(folders):
    names = [folders / f"m{i}" for i in range(3)]
    model = load_averaged(names)
    files = [load_file(n / "model.safetensors") for n in names]
    state = model.state_dict()
    key = "model.layers.0.mlp.up_proj.weight"
    want = sum(f[key].double() for f in files) / 3
    torch.testing.assert_close(state[key], want.float())
    out = folders / "soup"
    save_model(model, out)  # it round-trips as an HF folder
    torch.testing.assert_close(load_file(out / "model.safetensors")[key], want.float())
    start = load_file(folders / "start" / "model.safetensors")[key].double()
    extrapolated = load_averaged(names, start=folders / "start", alpha=2.0).state_dict()[key]
    torch.testing.assert_close(extrapolated, (start + 2.0 * (want - start)).float())


def test_load_averaged_refuses_other_architectures(folders, tmp_path):
    other = tmp_path / "wide"
    save_model(lmforge.CausalLM(preset_config("tiny", intermediate_size=96)), other)
    with pytest.raises(CheckpointError, match=r"wide: config.json differs .*intermediate_size"):
        load_averaged([folders / "m0", other])
    with pytest.raises(ValueError, match="give the start folder"):
        load_averaged([folders / "m0"], alpha=1.5)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_averaged([folders / "m0", tmp_path])
