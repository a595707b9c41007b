"""lmforge/eval/checkpoint.py: a checkpoint folder evaluated end to end."""

from __future__ import annotations

import pytest

from lmforge.eval.accuracy import evaluate_accuracy
from lmforge.eval.checkpoint import evaluate_checkpoint
from lmforge.eval.perplexity import perplexity
from lmforge.eval.tasks import task_items
from lmforge.models.hf import load_model
from lmforge.tokenizer import load_tokenizer


def test_checkpoint_result_is_the_parts_results(chat_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a small story about a fox and a dog.")
    sampling = dict(samples=2, ks=(1, 2), temperature=1.0, max_tokens=4, seed=3)
    result = evaluate_checkpoint(chat_model_dir, tasks=["arithmetic"], text_files=[text],
                                 problems=3, **sampling)  # fmt: skip
    model, tok = load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)
    assert result["perplexity"]["perplexity"] == pytest.approx(
        perplexity(model, tok, [text])["perplexity"]
    )
    direct = evaluate_accuracy(model, tok, task_items("arithmetic", 3, seed=3), **sampling)
    assert result["tasks"]["arithmetic"]["metrics"] == direct["metrics"]
    assert result["model"] == str(chat_model_dir)


def test_adapter_equals_merging_the_lora_by_hand(chat_model_dir, tmp_path):
    """A LoRA adapter folder evaluated on its recorded base = W + (α/r)·B·A folded into a
    plain copy of the base by hand."""
    import torch

    from lmforge.peft import apply_lora, save_adapter

    torch.manual_seed(0)
    lora = apply_lora(load_model(chat_model_dir), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    factors = {}
    for name, module in lora.named_modules():
        if hasattr(module, "lora_B"):
            with torch.no_grad():
                module.lora_B["default"].weight.normal_(0, 0.5)
            factors[name] = (module.lora_A["default"].weight.detach().clone(),
                             module.lora_B["default"].weight.detach().clone())  # fmt: skip
    assert factors
    save_adapter(lora, tmp_path / "adapter", base_model_name_or_path=str(chat_model_dir))
    by_hand = load_model(chat_model_dir)
    modules = dict(by_hand.named_modules())
    with torch.no_grad():
        for name, (a, b) in factors.items():
            modules[name.removesuffix(".base_layer")].weight += (8 / 4) * b @ a
    tok = load_tokenizer(chat_model_dir)
    sampling = dict(samples=1, ks=(1,), temperature=0.0, max_tokens=6, seed=0)
    result = evaluate_checkpoint(None, adapter=tmp_path / "adapter", tasks=["arithmetic"],
                                 problems=3, **sampling)  # fmt: skip
    assert result["model"] == str(chat_model_dir)
    assert result["adapter"] == str(tmp_path / "adapter")
    direct = evaluate_accuracy(by_hand.eval(), tok, task_items("arithmetic", 3, seed=0), **sampling)
    plain = evaluate_accuracy(load_model(chat_model_dir).eval(), tok,
                              task_items("arithmetic", 3, seed=0), **sampling)  # fmt: skip
    assert result["tasks"]["arithmetic"] == direct
    assert direct["problems"] != plain["problems"]  # the adapter changed the answers
    with pytest.raises(ValueError, match="a model folder or an adapter folder"):
        evaluate_checkpoint(None, tasks=["arithmetic"])
