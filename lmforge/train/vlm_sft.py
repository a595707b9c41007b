"""Multimodal supervised fine-tuning through the one `Trainer` (``lmforge vlm sft``): a
vision-language model (an HF ``qwen2_vl`` folder in ``model.init_from``, or a tiny one built
from scratch) on synthetic visual question answering (`lmforge.vision.vlm_tasks`), packed
several image-text examples per row, loss on the assistant answers only.

    config = load_config("recipes/vlm-tiny.yaml", [], VLMRunConfig)
    summary = train_vlm_sft(config)     # summary["heldout_accuracy"]: per task and "all"

Stages (``vlm.stage``), as LLaVA (Liu et al. 2023 §4.1) and Qwen2-VL train: ``projector``
trains only the patch merger / projector with the encoder and the language model frozen
(aligning image tokens to the LM's embedding space); ``joint`` trains everything. With
``--peft lora`` only LoRA adapters train (on the targeted projections, ``q_proj,v_proj`` by
default: the language model's), saved as a PEFT adapter folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from lmforge.config import ConfigError, ModelConfig
from lmforge.io import atomic_write_text
from lmforge.models.hf import load_model
from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.pointer_head import POINTER_CELLS, pointer_loss, pointer_target
from lmforge.models.vision_encoder import VisionConfig
from lmforge.models.vlm import VisionLanguageModel, VLMConfig
from lmforge.peft.settings import PeftSettings, apply_peft
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import RunConfig
from lmforge.train.distributed import DistInfo, unwrap
from lmforge.train.loop import Trainer
from lmforge.train.objective import LossOutput, Objective
from lmforge.train.run import check_resumable, fit_and_export, print_summary, training_run
from lmforge.vision.processor import (
    ImageProcessor,
    ImageProcessorConfig,
    save_preprocessor_config,
)
from lmforge.vision.vlm_data import (
    MultimodalPackedLoader,
    answer_questions,
    encode_chat,
    train_vqa_tokenizer,
)
from lmforge.vision.vlm_tasks import TASKS, accuracy_by_task, make_vqa_examples

STAGES = ("projector", "joint")


@dataclass
class VLMShape:
    """The sizes of a Qwen2-VL-shaped model built from scratch (``model.init_from`` empty),
    `tiny_vlm`'s input; config sections that can build one (``vlm``, ``agent``) extend it."""

    patch_size: int = 4
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: list[int] = field(default_factory=lambda: [2, 3, 3])
    vocab_size: int = 512
    lm_init_std: float = 0.02  # N(0, σ²) of the LM
    vision_init: Literal["fan_in", "config"] = "config"  # encoder N(0, 1/fan_in) or N(0, 0.02²)


@dataclass
class VLMSection(VLMShape):
    """The tasks, the image geometry, the training stage and (from scratch) the sizes; the
    initialisation defaults to `fan_in_init_` on the encoder and σ = 0.1 on the LM (GPT-2's
    0.02 is for widths ≈ 768: at 64 the tiny VLM sits on the answer prior for hundreds of
    steps)."""

    lm_init_std: float = 0.1
    vision_init: Literal["fan_in", "config"] = "fan_in"

    tasks: list[str] = field(default_factory=lambda: ["colour", "shape", "count"])
    image_size: int = 32
    train_examples: int = 1000  # per task
    eval_examples: int = 100  # per task, from the held-out split
    stage: Literal["projector", "joint"] = "joint"
    max_new_tokens: int = 4


@dataclass
class VLMRunConfig(RunConfig):
    """A multimodal SFT run: the training sections plus ``vlm``."""

    out_dir: str = "runs/vlm-tiny"
    vlm: VLMSection = field(default_factory=VLMSection)


def check_vlm_shape(shape: VLMShape, section: str) -> None:
    """Checks of the model-building fields every `VLMShape` section shares (``section``
    names it in the `ConfigError`)."""
    if shape.vision_init not in ("fan_in", "config"):
        raise ConfigError(f"{section}.vision_init={shape.vision_init!r}: choose fan_in or config")
    if shape.lm_init_std <= 0:
        raise ConfigError(f"{section}.lm_init_std={shape.lm_init_std} must be > 0")


def check_vlm_config(config: VLMRunConfig) -> None:
    """Range checks of the ``vlm`` section (`ConfigError` naming the field)."""
    v = config.vlm
    bad = [t for t in v.tasks if t not in TASKS]
    if bad or not v.tasks:
        raise ConfigError(f"vlm.tasks={v.tasks}: choose from {', '.join(TASKS)}")
    if v.stage not in STAGES:
        raise ConfigError(f"vlm.stage={v.stage!r}: choose one of {STAGES}")
    if v.image_size % (2 * v.patch_size):
        raise ConfigError(
            f"vlm.image_size={v.image_size} must be a multiple of 2 × vlm.patch_size={v.patch_size}"
        )
    check_vlm_shape(v, "vlm")
    if v.train_examples < 1 or v.eval_examples < 0:
        raise ConfigError("vlm.train_examples must be ≥ 1 and vlm.eval_examples ≥ 0")


def _labelled_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden: bool):
    """The model's output on a packed multimodal batch (summed loss over the labelled
    tokens; the final hidden states too with ``hidden``) and the labelled tokens' count."""
    out = model(
        input_ids=batch["input_ids"],
        pixel_values=batch["pixel_values"] if batch["pixel_values"].numel() else None,
        image_grid_thw=batch["image_grid_thw"] if batch["image_grid_thw"].numel() else None,
        document_ids=batch.get("document_ids"),
        labels=batch["labels"],
        loss_reduction="sum",
        output_hidden_states=hidden,
    )
    return out, (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def vlm_objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Summed next-token loss over the labelled (assistant) tokens of a packed multimodal
    batch, and their count."""
    out, count = _labelled_forward(model, batch, hidden=False)
    return LossOutput(out.loss, count)


def pointer_objective(weight: float = 1.0, cells: str = "overlap") -> Objective:
    """`vlm_objective` plus the pointer head's loss (`lmforge.models.pointer_head`): the mean
    over the batch's pointer queries of ``−Σ_i t_i log p_i`` (GUI-Actor eq. 3, a target
    uniform over the box's image tokens: ``cells`` "overlap", those overlapping it, or
    "centre", those whose centre it holds; `pointer_target`), times ``weight``, counted as that much
    loss per labelled token (so the total is ``LM mean + weight · pointer mean``). The mean is
    the micro-batch's, weighted by its tokens, so a DDP step equals gradient accumulation over
    the ranks' micro-batches. Logs ``pointer_loss`` and ``pointer_hit`` (the argmax token is
    one of the target's)."""
    if cells not in POINTER_CELLS:
        raise ValueError(f"cells={cells!r}: choose one of {POINTER_CELLS}")

    def objective(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out, count = _labelled_forward(model, batch, hidden=True)
        queries = batch.get("pointer_queries")
        if queries is None or not queries.numel():
            zero = out.loss.new_zeros(())
            # the head still joins the graph: DDP reduces every parameter's gradient each step
            head = unwrap(model).pointer_head.parameters()
            loss = out.loss + 0.0 * sum(p.sum() for p in head)
            return LossOutput(loss, count, {"pointer_loss": zero, "pointer_hit": zero})
        logits, grids = unwrap(model).pointer_logits(
            out.hidden_states, batch["input_ids"], batch["image_grid_thw"], queries,
            batch["pointer_images"].tolist(),
        )  # fmt: skip
        targets = torch.zeros_like(logits, dtype=torch.float32)
        for q, (box, grid) in enumerate(zip(batch["pointer_boxes"].tolist(), grids, strict=True)):
            t = pointer_target(tuple(box), grid, cells)
            targets[q, : t.numel()] = t
        per_query = pointer_loss(logits, targets)
        hit = (targets.gather(1, logits.argmax(-1, keepdim=True)) > 0).float().mean()
        mean = per_query.mean()
        scale = count.clamp(min=1).to(mean.dtype)
        metrics = {"pointer_loss": mean.detach() * scale, "pointer_hit": hit * scale}
        return LossOutput(out.loss + weight * mean * scale, count, metrics)

    return objective


def tiny_vlm(section: VLMShape, tokenizer: Any) -> VisionLanguageModel:
    """A Qwen2-VL-shaped model from scratch sized by ``section`` (saves as ``qwen2_vl``)."""
    s = section
    text = ModelConfig(
        model_type="qwen2", vocab_size=s.vocab_size, hidden_size=s.hidden_size,
        intermediate_size=4 * s.hidden_size, num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads, qkv_bias=True,
        max_position_embeddings=1024, eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id, initializer_range=s.lm_init_std,
    )  # fmt: skip
    vision = VisionConfig(
        hidden_size=s.vision_hidden, depth=s.vision_depth, num_heads=s.vision_heads,
        intermediate_size=2 * s.vision_hidden, patch_size=s.patch_size,
        out_hidden_size=s.hidden_size,
    )  # fmt: skip
    config = VLMConfig(
        text=text, vision=vision, image_token_id=tokenizer.token_to_id("<|image_pad|>"),
        vision_start_token_id=tokenizer.token_to_id("<|vision_start|>"),
        vision_end_token_id=tokenizer.token_to_id("<|vision_end|>"),
        video_token_id=tokenizer.token_to_id("<|image_pad|>"), mrope_section=s.mrope_section,
    )  # fmt: skip
    model = VisionLanguageModel(config)
    if s.vision_init == "fan_in":
        fan_in_init_(model.visual)
    return model


@torch.no_grad()
def fan_in_init_(module: torch.nn.Module) -> None:
    """LeCun-normal initialisation: every linear map (and the patch embedding) of ``module``
    drawn from N(0, 1/fan_in), so a layer keeps its input's scale (LeCun et al. 1998
    "Efficient BackProp" §4.6); biases stay as they are. From scratch at widths of 64,
    N(0, 0.02²) shrinks the image signal ≈ 6× per layer and a tiny VLM then sits on the
    answer prior for hundreds of steps (BENCHMARKS.md, vision-language section)."""
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, torch.nn.LayerNorm) or not isinstance(weight, torch.nn.Parameter):
            continue
        if weight.ndim >= 2:
            fan_in = weight[0].numel()
            torch.nn.init.normal_(weight, std=fan_in**-0.5)


def freeze_for_stage(model: VisionLanguageModel, stage: str) -> None:
    """``projector``: only ``visual.merger`` trains; ``joint``: everything trainable stays so."""
    if stage == "projector":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("visual.merger."))


def image_processor_for(
    model: VisionLanguageModel, image_size: int, aspect: int = 1
) -> ImageProcessor:
    """The processor matching the model's patch geometry, with a budget of ``aspect``
    images of ``image_size``² pixels (the task images keep their size; ``aspect=2`` fits the
    ``words`` task's ``image_size × 2·image_size`` images)."""
    v = model.config.vision
    factor = v.patch_size * v.spatial_merge_size
    return ImageProcessor(ImageProcessorConfig(
        patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size, min_pixels=factor * factor,
        max_pixels=aspect * max(image_size, factor) ** 2,
    ))  # fmt: skip


def train_vlm_sft(
    config: VLMRunConfig,
    *,
    peft: PeftSettings | None = None,
    dist: DistInfo | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train, export ``model/`` (an HF ``qwen2_vl`` folder with its tokenizer) and report
    the held-out accuracy per task (also written to ``heldout_accuracy.json``)."""
    check_vlm_config(config)
    v, t = config.vlm, config.train
    run_dir = Path(config.out_dir)
    with training_run(config, dist, console) as (dist, console):
        check_resumable(config)
        torch.manual_seed(t.seed)
        if config.model.init_from:
            model = load_model(config.model.init_from, dtype=torch.float32)
            if not isinstance(model, VisionLanguageModel):
                raise ConfigError(f"model.init_from={config.model.init_from}: not a VLM folder")
            tokenizer = load_tokenizer(config.data.tokenizer or config.model.init_from)
        else:
            tokenizer = train_vqa_tokenizer(v.tasks, v.vocab_size)
            model = tiny_vlm(v, tokenizer)
        processor = image_processor_for(model, v.image_size, 2 if "words" in v.tasks else 1)
        train_ex = make_vqa_examples(v.tasks, v.train_examples, v.image_size, t.seed, "train")
        heldout = make_vqa_examples(v.tasks, v.eval_examples, v.image_size, t.seed, "test")
        encode = lambda ex: encode_chat(tokenizer, processor, ex.messages(), ex.images)  # noqa: E731
        examples = [encode(ex) for ex in train_ex]
        val = [encode(ex) for ex in heldout[: max(1, len(heldout) // 4)]] if heldout else []
        # each DDP rank packs the same rows and trains on its own share of every batch
        packing = {"pad_id": tokenizer.pad_token_id or 0, "rank": dist.rank, "world_size": dist.world_size}  # fmt: skip
        seq_len = max(config.data.seq_len, max(len(e) for e in examples))
        loader = MultimodalPackedLoader(examples, seq_len, t.batch_size, seed=t.seed, **packing)
        val_loader = (
            MultimodalPackedLoader(val, seq_len, t.batch_size, shuffle=False, **packing)
            if val
            else None
        )
        freeze_for_stage(model, v.stage)
        apply_peft(model, peft, str(config.model.init_from or run_dir))
        console.print(
            f"[bold]vlm[/]: {len(examples)} examples ({', '.join(v.tasks)}), "
            f"{loader.rows_per_epoch} packed rows of {seq_len}; stage {v.stage}; "
            f"{model.num_parameters(trainable_only=True):,} of {model.num_parameters():,} "
            "parameters train"
        )
        trainer = Trainer(model, loader, config, val_data=val_loader, objective=vlm_objective,
                          tokenizer=tokenizer, run_dir=run_dir, dist=dist, console=console)  # fmt: skip
        summary = fit_and_export(trainer, run_dir)
        if dist.is_main:
            save_preprocessor_config(processor.config, summary["model_dir"])
        if heldout:
            model.eval()
            predictions = answer_questions(model, tokenizer, processor, heldout, v.max_new_tokens)
            summary["heldout_accuracy"] = accuracy_by_task(heldout, predictions)
            if dist.is_main:
                atomic_write_text(run_dir / "heldout_accuracy.json",
                                  json.dumps(summary["heldout_accuracy"], indent=2) + "\n")  # fmt: skip
            console.print(f"[bold]held-out accuracy[/]: {summary['heldout_accuracy']}")
        print_summary(summary, console)
    return summary


__all__ = [
    "STAGES",
    "VLMRunConfig",
    "VLMSection",
    "VLMShape",
    "check_vlm_config",
    "check_vlm_shape",
    "fan_in_init_",
    "freeze_for_stage",
    "image_processor_for",
    "pointer_objective",
    "tiny_vlm",
    "train_vlm_sft",
    "vlm_objective",
]
