"""The one reference-policy implementation: which reference a policy gets, the module that runs
it (frozen copy moved to the batch's device, or the policy with adapters off), bad references.
The trainers' own tests check that each (DPO, PPO, GRPO) scores with it."""

from __future__ import annotations

import pytest
import torch

from lmforge.align.reference import (
    ADAPTER,
    check_reference,
    frozen_copy,
    make_reference,
    reference_model,
)
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM


def _model(seed=0):
    torch.manual_seed(seed)
    return CausalLM(preset_config("tiny", vocab_size=32, hidden_size=32, intermediate_size=64))


def _lora(model):
    from lmforge.peft import apply_lora

    apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # a trained-looking adapter, so policy and base differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


IDS = torch.tensor([[1, 2, 3, 4, 5]])


def test_make_reference_is_none_a_frozen_copy_or_the_adapter_base():
    policy = _model()
    assert make_reference(policy, 0.0) is None
    ref = make_reference(policy, 0.1)
    assert isinstance(ref, torch.nn.Module) and ref is not policy and not ref.training
    assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)  # training the policy leaves the copy at the start
    torch.testing.assert_close(ref(IDS).logits, _model()(IDS).logits)
    assert make_reference(_lora(_model()), 0.1) == ADAPTER


def test_frozen_copy_has_no_gradients_and_evaluates():
    ref = frozen_copy(_model().train())
    assert not ref.training and all(not m.training for m in ref.modules())
    assert not any(p.requires_grad for p in ref.parameters())


def test_reference_model_runs_the_base_with_adapters_off_then_restores_them():
    policy, base = _lora(_model()), _model()
    before = policy(IDS).logits
    with reference_model(ADAPTER, policy) as ref:
        assert ref is policy
        torch.testing.assert_close(ref(IDS).logits, base(IDS).logits)
    torch.testing.assert_close(policy(IDS).logits, before)
    assert not torch.allclose(before, base(IDS).logits)


def test_reference_model_moves_a_frozen_copy_to_the_batch_device():
    ref = frozen_copy(_model())
    with reference_model(ref, None, torch.device("cpu")) as module:
        assert module is ref
    with reference_model(ref, None, torch.device("meta")) as module:
        assert module is ref and next(ref.parameters()).device.type == "meta"


def test_bad_references_are_named():
    check_reference(None)
    check_reference(ADAPTER)
    check_reference(_model())
    with pytest.raises(ValueError, match="reference='copy'"):
        check_reference("copy")
    with pytest.raises(TypeError, match="expected a module"):
        check_reference(3)
    with pytest.raises(ValueError, match="no reference policy"), reference_model(None, _model()):
        pass
    with pytest.raises(ValueError, match="needs the policy"), reference_model(ADAPTER):
        pass
