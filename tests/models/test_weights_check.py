"""Weight files checked on load: damaged files, unsupported dtypes and NaN/inf weights are
errors naming the file and the tensor (`lmforge.models.weights_check`, via `load_model`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmforge
from lmforge.models.presets import preset_config
from lmforge.models.weights_check import WeightsError, check_tensor, read_checked_weights

NAME = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64,
                           num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)  # fmt: skip
    lmforge.save_model(lmforge.CausalLM(config), tmp_path)
    return tmp_path


def _rewrite(folder, name, tensor):
    state = load_file(folder / "model.safetensors")
    state[name] = tensor
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_non_finite_weights_are_rejected_naming_the_tensor(folder):
    weight = load_file(folder / "model.safetensors")[NAME]
    weight[3, 5], weight[7, 1] = float("nan"), float("inf")
    _rewrite(folder, NAME, weight)
    with pytest.raises(WeightsError) as err:
        lmforge.load_model(folder)
    text = str(err.value)
    assert str(folder / "model.safetensors") in text and repr(NAME) in text
    assert "2 non-finite value(s)" in text and "index [3, 5]" in text
    assert "allow_non_finite=True" in text
    model = lmforge.load_model(folder, allow_non_finite=True)  # for inspection
    assert torch.isnan(model.get_parameter(NAME)[3, 5])


def test_bf16_nan_is_found_too():
    with pytest.raises(WeightsError, match="'w' has 1 non-finite"):
        check_tensor("w", torch.tensor([1.0, float("nan")], dtype=torch.bfloat16), "f")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int8])
def test_unsupported_dtype_names_file_tensor_and_dtype(folder, dtype):
    weight = load_file(folder / "model.safetensors")[NAME]
    _rewrite(folder, NAME, weight.to(dtype))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(WeightsError, match=rf"model.safetensors: tensor '{NAME}' has dtype {name}"):
        lmforge.load_model(folder)


def test_truncated_and_header_damaged_files_are_named(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model.safetensors: not a readable safetensors file"):
        lmforge.load_model(folder)
    damaged = bytearray(data)
    damaged[8:12] = b"\xff\xfe\x00{"  # inside the JSON header
    path.write_bytes(bytes(damaged))
    with pytest.raises(WeightsError, match="truncated or its header is damaged"):
        read_checked_weights([path])
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(WeightsError, match="4 bytes"):
        read_checked_weights([path])


def test_good_weights_load_unchanged(folder):
    state = read_checked_weights([folder / "model.safetensors"])
    reference = load_file(folder / "model.safetensors")
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
