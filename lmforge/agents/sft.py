"""Supervised fine-tuning of a GUI agent through the one `Trainer`: a vision-language model
(an HF ``qwen2_vl`` folder in ``model.init_from``, or a tiny one from scratch) on the agent
data of `lmforge.agents.agent_data`, then evaluated on held-out grounding and episodes.

    config = load_config("recipes/agent-tiny.yaml", [], AgentRunConfig)
    summary = train_agent_sft(config)   # summary["agent_eval"]: grounding accuracy, success, …

UI-TARS trains perception and grounding before and alongside trajectories (Qin et al. 2025
§4.2–4.4); ``agent.kinds`` picks the mix (``[perception, state_qa, grounding]`` for a
grounding stage, then ``[trajectory, reflection]`` from that checkpoint, or all at once).
The examples are packed with `MultimodalPackedLoader` (under DDP each rank trains on its own
rows of every batch) and trained with `vlm_objective` (loss on the answers only), exactly as
``lmforge vlm sft`` trains; held-out figures are written to ``agent_eval.json``.

Grounding options (BENCHMARKS.md, "GUI agent" sections): ``agent.grounding_turns=8`` asks every
element of a screen in one chat (one image encoding trains ~8 answers); ``agent.merge_size=1``:
8-px image tokens (widget rows are ~12 px); ``agent.random_screens``: random-widget windows, where
no text prior tells where an element is; ``coordinate_tokens``, ``rope_theta``,
``grounding_shift`` did not help. Episodes: under the action grammar, ``type()`` held to the
instruction's spans (``agent.typing``), thoughts to `lmforge.agents.thoughts` (``agent.thoughts``),
clicks pointed in context or from a grounding question (``agent.clicks``, `lmforge.agents.grounded`).

The pointer head (``agent.pointer_size`` > 0; GUI-Actor, `lmforge.models.pointer_head`): a
click's point is not read from the coordinates' text but from a head that points at one of
the current screenshot's image tokens. Every assistant turn whose answer is a coordinate
action with a known target box (`lmforge.agents.agent_data.pointer_queries`: grounding
turns, trajectory and reflection steps) gets a query at the token ending with the action's
``(``, trained by `pointer_objective` (the LM loss on the answers + ``agent.pointer_weight``
× the pointer's cross-entropy against the box's tokens); the text answers still train, so
the agent still writes ``click(x,y)``. `evaluate_agent_model` then scores grounding by
pointing (`point_clicks`: the prompt + ``click(``, `VisionLanguageModel.point`, the region readout
`pointer_point`) and reports the text answers' figure as ``grounding_accuracy_text``. Measured
(``recipes/agent-pointer.yaml``: grounding only, 200 train tasks + 400 random screens, 8 questions
per chat, 8-px tokens, width 64, 2,500 steps, one thread, one seed): with a 2-layer vision encoder
(16 min wall) held-out grounding 0.67 by the pointer, 0.29 by its own text answers; with 4
layers (17 min) 0.725 and 0.445. What the pointer misses is list rows (12/45 and 10/45 held-out, 4/21 on training screens:
chance among 4–5 rows; it finds the list but not the item whose number is named); the other kinds
are 0.79 (0.87 with 4 layers) held-out, 0.93 on training screens. Adding perception (dense
captions) at equal steps: 0.655, rows still at chance (captions: 0/58 held-out list items right).

Tries at the rows that did not make the model read them (session 10): kind ``reading`` (+
``agent.reading_screens``), ``agent.zoom`` = 2 (2× crops, a zoomed second look at evaluation).

A dense glyph (OCR) objective (issue 18, session 11; `lmforge.agents.glyph`): with
``agent.glyph_weight`` > 0 a train-only `GlyphHead` on the encoder's output tokens predicts each
8-px token's characters (2 ordered slots, targets from the renderer's own layout) and
``glyph_weight`` × its loss joins the objective (`glyph_objective`); ``agent.glyph_steps`` runs an
encoder-only glyph stage first, on the examples' screenshots or (``agent.glyph_screens=fresh``) on
new list-heavy random windows. ``model/`` is saved without the head (``run_dir/glyph_head.pt``).
Measured (``recipes/agent-glyph.yaml``): the encoder learns to read (a probe for a row's number
0.45 held out, from 0.117) but held-out grounding stays at 0.70–0.71, list rows 10–14 / 45.

Matching the question's number to the row (session 12), opt-in: ``agent.row_target=number``
points a list-row question's pointer target at the tokens that show the row's number
(`lmforge.agents.agent_data.number_box`, from the glyph layout) instead of the whole row
(``last_digit``: its last digit's token only); ``agent.row_screens`` adds grounding on the rows
only of list-heavy random screens; ``agent.query_weight`` adds a train-only head that reads the
question's item number from the pointer's query state (`lmforge.agents.glyph.query_objective`: a
probe found the row's number in the pointer's keys but not in its query; ``agent.query_keys``:
the same head also reads the row's last-digit image token). All four at query weight 0.3:
held-out grounding 0.865, rows 38/45. Session 13: ``agent.pointer_cells=centre`` (targets: the
cells whose centre lies in the box) and ``agent.query_labels`` (the head also reads other kinds'
labels); with both and 800 random windows (``recipes/agent-match.yaml``): 0.935, rows 37/45.
Session 26: ``agent.option_screens`` adds grounding on the open list's options of
dropdown-heavy random screens (held-out grounding of options was 0.56; dropdown_save 0.42 →
0.80 with 200 such screens).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from tokenizers import AddedToken

from lmforge.agents.agent_data import (
    LIST_HEAVY,
    make_agent_dataset,
    pointer_queries,
)
from lmforge.agents.glyph import (
    GlyphPackedLoader,
    attach_glyph_head,
    attach_query_head,
    detach_glyph_head,
    detach_query_head,
    example_glyph_targets,
    fresh_glyph_batches,
    glyph_objective,
    glyph_pretrain,
    query_label_targets,
    query_number_targets,
    query_objective,
)
from lmforge.agents.grounding import grounding_eval, has_pointer
from lmforge.agents.policy import VLMPolicy
from lmforge.agents.rollout import evaluate_agent
from lmforge.agents.sft_config import AgentRunConfig, AgentSection, check_agent_config, uses_glyphs
from lmforge.config import ConfigError
from lmforge.io import atomic_write_json
from lmforge.models.block_expansion import expand_blocks
from lmforge.models.hf import load_model
from lmforge.models.pointer_head import PointerHead
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.run import check_resumable, fit_and_export, print_summary, training_run
from lmforge.train.vlm_sft import (
    fan_in_init_,
    image_processor_for,
    pointer_objective,
    tiny_vlm,
    vlm_objective,
)
from lmforge.vision.processor import (
    QWEN2_VL_CHAT_TEMPLATE,
    ImageProcessor,
    save_preprocessor_config,
)
from lmforge.vision.vlm_data import (
    VLM_SPECIAL_TOKENS,
    MultimodalPackedLoader,
    encode_chat,
)
from lmforge.vision.vlm_tasks import VQAExample


def coordinate_tokens(screen: int) -> list[AddedToken]:
    """One (non-special) token per coordinate value 0 … ``screen``−1: ``click(103,32)``
    encodes as ``click ( 103 , 32 )``, each coordinate one choice among ``screen`` instead of
    a variable number of digit tokens whose place value the model must infer."""
    return [AddedToken(str(n), special=False, normalized=False) for n in range(screen)]


def train_agent_tokenizer(
    examples: list[VQAExample], vocab_size: int, coordinates: int = 0
) -> Tokenizer:
    """Byte-level BPE on the examples' prompts and answers, with the vision special tokens
    and Qwen2-VL's chat template; with ``coordinates`` = n, BPE learns ``vocab_size`` − n
    tokens and the n `coordinate_tokens` are added (the total stays ≤ ``vocab_size``)."""
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 20
    texts += [ex.question for ex in examples] + [ex.answer for ex in examples]
    texts += [t for ex in examples for turn in getattr(ex, "turns", []) for t in turn]
    tokenizer = Tokenizer.train(texts, vocab_size=vocab_size - coordinates, min_frequency=1,
                                special_tokens=VLM_SPECIAL_TOKENS,
                                chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    if coordinates:
        tokenizer.backend.add_tokens(coordinate_tokens(coordinates))
    return tokenizer


def add_pointer_head(model: VisionLanguageModel, size: int) -> VisionLanguageModel:
    """``model`` with a fresh `PointerHead` of width ``size`` (PyTorch's default init, as
    `VisionLanguageModel` builds one; ``VLMConfig.pointer_size`` set, so it saves) unless it
    already has a head, which is kept whatever its width; ``size`` 0 changes nothing."""
    if size > 0 and model.pointer_head is None:
        model.config.pointer_size = size
        model.pointer_head = PointerHead(model.config.text.hidden_size, size)
    return model


def agent_model(config: AgentRunConfig, examples: list[VQAExample]):
    """(model, tokenizer): loaded from ``model.init_from`` or built from scratch. With
    ``agent.pointer_size`` > 0 the model gets a pointer head (`add_pointer_head`): from
    scratch a fresh one; a folder without a head gets a fresh one on its trained body; a
    folder with a head (``"pointer_head"`` in its config.json) keeps its own (trained) head
    — also with ``agent.pointer_size`` = 0, so a pointer agent's later stages keep pointing."""
    a = config.agent
    if config.model.init_from:
        model = load_model(config.model.init_from, dtype=torch.float32)
        if not isinstance(model, VisionLanguageModel):
            raise ConfigError(f"model.init_from={config.model.init_from}: not a VLM folder")
        tokenizer = load_tokenizer(config.data.tokenizer or config.model.init_from)
        model = expand_blocks(model, a.expand_blocks) if a.expand_blocks else model
        return add_pointer_head(model, a.pointer_size), tokenizer
    tokenizer = train_agent_tokenizer(
        examples, a.vocab_size, a.screen if a.coordinate_tokens else 0
    )
    model = tiny_vlm(a, tokenizer)
    config = model.config
    if (a.rope_theta, a.merge_size) != (config.text.rope_theta, config.vision.spatial_merge_size):
        config.text = replace(config.text, rope_theta=a.rope_theta)
        config.vision = replace(config.vision, spatial_merge_size=a.merge_size)
        model = VisionLanguageModel(config)
        if a.vision_init == "fan_in":  # the rebuilt encoder needs `tiny_vlm`'s init again
            fan_in_init_(model.visual)
    return add_pointer_head(model, a.pointer_size), tokenizer


def evaluate_agent_model(
    model: Any, tokenizer: Any, processor: ImageProcessor, a: AgentSection, seed: int
) -> dict[str, Any]:
    """Held-out grounding accuracy on ``a.eval_grounding`` grounding questions on held-out
    layouts — by the pointer head (`point_clicks`) when the model has one, its greedy text
    answers then reported as ``grounding_accuracy_text`` — and episode metrics on
    ``a.eval_split`` (greedy, constrained if asked)."""
    model.eval()
    out: dict[str, Any] = {}
    if a.eval_grounding:
        out.update(grounding_eval(model, tokenizer, processor, a.eval_grounding, seed + 7919,
                                  a.screen, a.history, a.question_first, a.zoom))  # fmt: skip
    if a.eval_tasks:
        policy = VLMPolicy(model, tokenizer, processor, (a.screen, a.screen), a.history,
                           a.max_new_tokens, constrained=a.constrained, typing=a.typing,
                           thoughts=a.thoughts, clicks=a.clicks)  # fmt: skip
        summary, _ = evaluate_agent(policy, a.eval_split, a.eval_tasks, seed + 104729, a.max_steps,
                                    (a.screen, a.screen))  # fmt: skip
        out["episodes"] = summary
    return out


def train_agent_sft(
    config: AgentRunConfig, *, dist: DistInfo | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Train on the agent data, export ``model/`` and report held-out figures (also in
    ``agent_eval.json``)."""
    check_agent_config(config)
    a, t = config.agent, config.train
    run_dir = Path(config.out_dir)
    with training_run(config, dist, console) as (dist, console):
        check_resumable(config)
        torch.manual_seed(t.seed)
        data = make_agent_dataset("train", a.train_tasks, t.seed, a.history, a.mistake_rate,
                                  a.screen, a.screen, a.grounding_count, a.grounding_turns,
                                  a.grounding_shift, a.random_screens, a.question_first,
                                  a.reading_screens, a.zoom, a.zoom_crops, row_screens=a.row_screens,
                                  expert_drags=a.expert_drags, composed=a.composed, clauses=a.clauses,
                                  option_screens=a.option_screens, messages=a.messages,
                                  glyphs=uses_glyphs(a) or a.row_target != "box" or a.query_labels)  # fmt: skip
        train_ex = [ex for k in a.kinds for ex in data[k]]
        random.Random(t.seed).shuffle(train_ex)
        model, tokenizer = agent_model(config, train_ex)
        processor = image_processor_for(model, a.screen)
        pointer = has_pointer(model)
        screen = (a.screen, a.screen)

        queried = [pointer_queries(ex, screen, a.row_target) if pointer else [] for ex in train_ex]
        examples = [encode_chat(tokenizer, processor, ex.messages(), ex.images, q)
                    for ex, q in zip(train_ex, queried, strict=True)]  # fmt: skip
        val = examples[: max(1, len(train_ex) // 50)]
        packing = {"pad_id": tokenizer.pad_token_id or 0, "rank": dist.rank, "world_size": dist.world_size}  # fmt: skip
        seq_len = max(config.data.seq_len, max(len(e) for e in examples))
        if uses_glyphs(a) or a.query_weight > 0:
            if uses_glyphs(a):
                attach_glyph_head(model, a.glyph_slots)
            v = model.config.vision
            cell = v.patch_size * v.spatial_merge_size
            targets = [example_glyph_targets(ex, model.visual.tokens_per_image(e.image_grid_thw),
                                             cell, a.glyph_slots)
                       for ex, e in zip(train_ex, examples, strict=True)]  # fmt: skip
            numbers = points = None
            if a.query_weight > 0:
                attach_query_head(model, a.glyph_slots)
                if a.query_labels:
                    pairs = [query_label_targets(ex, q, screen, a.glyph_slots)
                             for ex, q in zip(train_ex, queried, strict=True)]  # fmt: skip
                    numbers, points = [n for n, _ in pairs], [p for _, p in pairs]
                else:
                    numbers = [query_number_targets(ex, q, a.glyph_slots)
                               for ex, q in zip(train_ex, queried, strict=True)]  # fmt: skip
            loader = GlyphPackedLoader(examples, targets, seq_len, t.batch_size, seed=t.seed,
                                       query_targets=numbers, key_points=points, **packing)  # fmt: skip
            val_loader = GlyphPackedLoader(val, targets[: len(val)], seq_len, t.batch_size,
                                           shuffle=False, **packing,
                                           query_targets=numbers and numbers[: len(val)],
                                           key_points=points and points[: len(val)])  # fmt: skip
        else:
            loader = MultimodalPackedLoader(examples, seq_len, t.batch_size, seed=t.seed, **packing)
            val_loader = MultimodalPackedLoader(
                val, seq_len, t.batch_size, shuffle=False, **packing
            )
        queries = sum(len(e.pointer_positions) for e in examples)
        console.print(
            f"[bold]agent[/]: {len(examples)} examples ({', '.join(f'{k} {len(data[k])}' for k in a.kinds)}), "
            f"{loader.rows_per_epoch} packed rows of {seq_len}; "
            f"{model.num_parameters(trainable_only=True):,} parameters train"
            + (
                f"; pointer head {model.config.pointer_size}, {queries} pointer queries"
                if pointer
                else ""
            )
        )
        objective = (
            pointer_objective(a.pointer_weight, a.pointer_cells) if pointer else vlm_objective
        )
        if a.glyph_weight > 0:
            objective = glyph_objective(objective, a.glyph_weight)
        if a.query_weight > 0:
            objective = query_objective(objective, a.query_weight, a.query_keys)
        if a.glyph_steps > 0:
            if a.glyph_screens == "fresh":  # list-heavy new random windows, 8 per step
                stage = fresh_glyph_batches(processor, 8, t.seed, screen, cell, a.glyph_slots,
                                            LIST_HEAVY)  # fmt: skip
            else:  # every rank the same rows: the ranks' heads pretrain identically
                stage = iter(GlyphPackedLoader(examples, targets, seq_len, t.batch_size,
                                               packing["pad_id"], seed=t.seed + 1))  # fmt: skip
            glyph_pretrain(model, stage, a.glyph_steps, config.optim.lr, console.print)
        trainer = Trainer(model, loader, config, val_data=val_loader, objective=objective,
                          tokenizer=tokenizer, run_dir=run_dir, dist=dist, console=console)  # fmt: skip
        if uses_glyphs(a) or a.query_weight > 0:  # train-only heads: model/ is saved without
            summary = trainer.fit()
            for name, head in (("glyph_head", detach_glyph_head(model)),
                               ("query_head", detach_query_head(model))):  # fmt: skip
                if dist.is_main and head is not None:
                    torch.save(head.state_dict(), run_dir / f"{name}.pt")
            summary["model_dir"] = str(trainer.export_model(run_dir / "model"))
        else:
            summary = fit_and_export(trainer, run_dir)
        if dist.is_main:
            save_preprocessor_config(processor.config, summary["model_dir"])
        if dist.is_main and (a.eval_tasks or a.eval_grounding):
            summary["agent_eval"] = evaluate_agent_model(model, tokenizer, processor, a, t.seed)
            atomic_write_json(run_dir / "agent_eval.json", summary["agent_eval"])
            console.print(f"[bold]held-out[/]: {summary['agent_eval']}")
        print_summary(summary, console)
    return summary


__all__ = [
    "add_pointer_head",
    "agent_model",
    "coordinate_tokens",
    "evaluate_agent_model",
    "train_agent_sft",
    "train_agent_tokenizer",
]
