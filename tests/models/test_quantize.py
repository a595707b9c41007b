"""Quantising a whole `CausalLM`: which layers, the tied head, save / load round trip, the
checks on a quantised folder, and greedy decoding of the quantised model through the engine."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lmforge.config import ConfigError
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.models.hf import load_model, save_model
from lmforge.models.kv_cache import KVCache
from lmforge.models.presets import preset_config
from lmforge.models.quantize import (
    QuantizationConfig,
    dequantize_model,
    quantizable_linears,
    quantize_model,
)
from lmforge.models.transformer import CausalLM
from lmforge.models.weights_check import WeightsError
from lmforge.nn.quant import Int4Linear, Int8Linear

VOCAB = 256


@pytest.fixture(scope="module")
def model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(preset_config("tiny", vocab_size=VOCAB)).eval()


def _ids(batch: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("scheme", "cls", "tol"), [("int8", Int8Linear, 0.03), ("int4", Int4Linear, 0.3)]
)
def test_quantize_model_swaps_projections_and_unties_the_head(model, scheme, cls, tol):
    q = quantize_model(copy.deepcopy(model), scheme, group_size=32)
    names = quantizable_linears(model)
    assert len(names) == 2 * 7 + 1 and names[-1] == "lm_head"
    assert all(type(q.get_submodule(n)) is cls for n in names)
    assert type(q.model.embed_tokens) is nn.Embedding
    # the head got its own copy; the embedding (and the source model's config) untouched
    assert not q.config.tie_word_embeddings and model.config.tie_word_embeddings
    torch.testing.assert_close(q.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert q.quantization_config == QuantizationConfig({"int8": 8, "int4": 4}[scheme], 32, names)
    ids = _ids()
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < tol
    with pytest.raises(ValueError, match="already quantised"):
        quantize_model(q, scheme)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_saved_quantised_folder_loads_back_equal(model, scheme, tmp_path):
    q = quantize_model(copy.deepcopy(model), scheme, group_size=32)
    save_model(q, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    block = cfg["quantization_config"]
    assert block["quant_method"] == "lmforge" and block["bits"] == {"int8": 8, "int4": 4}[scheme]
    assert cfg["tie_word_embeddings"] is False
    back = load_model(tmp_path)
    assert back.quantization_config == q.quantization_config
    assert type(back.lm_head) is type(q.lm_head)
    for ids in (_ids(), _ids(1, 3)):  # prefill (dequantised) and kernel paths
        with torch.no_grad():
            assert torch.equal(back(ids).logits, q(ids).logits)


def test_quantised_model_greedy_decode_through_the_engine(model):
    q = quantize_model(copy.deepcopy(model), "int8")
    prompt = _ids(1, 6, seed=3)
    # reference: the model's own forward with a contiguous KV cache, argmax per step
    cache, ids, expected = KVCache.for_model(q, 1, 32), prompt, []
    with torch.no_grad():
        for _ in range(10):
            logits = q(ids, cache=cache).logits[0, -1]
            expected.append(int(logits.argmax()))
            ids = torch.tensor([[expected[-1]]])
    out = Engine(q).generate(
        [prompt[0].tolist()], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    )
    assert out[0].token_ids == expected


def test_dequantize_model_gives_plain_linears_with_the_same_logits(model):
    q = quantize_model(copy.deepcopy(model), "int4", group_size=32)
    ids = _ids(2, 20)  # > 16 rows: the quantised layers run the dequantised matmul too
    with torch.no_grad():
        ref = q(ids).logits
        d = dequantize_model(q)
        assert all(type(m) is not Int4Linear for m in d.modules())
        assert not hasattr(d, "quantization_config")
        torch.testing.assert_close(d(ids).logits, ref)


def test_quantised_folder_checks_name_the_field_and_tensor(model, tmp_path):
    q = quantize_model(copy.deepcopy(model), "int8")
    save_model(q, tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    for block, field in [({**cfg["quantization_config"], "bits": 3}, "bits"),
                         ({**cfg["quantization_config"], "quant_method": "gptq"}, "quant_method"),
                         ({**cfg["quantization_config"], "modules": [*q.quantization_config.modules, "model.nope"]}, "model.nope")]:  # fmt: skip
        cfg_file.write_text(json.dumps({**cfg, "quantization_config": block}))
        with pytest.raises(ConfigError, match=field):
            load_model(tmp_path)
    # int4 declared over int8 tensors: the tensor and the dtype are named
    cfg_file.write_text(
        json.dumps({**cfg, "quantization_config": {**cfg["quantization_config"], "bits": 4}})
    )
    with pytest.raises(WeightsError, match="lm_head.weight.*int8.*uint8"):
        load_model(tmp_path)
