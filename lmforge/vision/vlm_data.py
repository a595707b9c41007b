"""Multimodal SFT data: chats with images → token ids with assistant-only labels and image
patches, packed several examples per row for the one `Trainer`.

    example = encode_chat(tokenizer, processor, messages, images)
    loader = MultimodalPackedLoader(examples, seq_len=256, batch_size=8, pad_id=0)
    batch = next(iter(loader))   # input_ids, labels, document_ids [B, T];
                                 # pixel_values [N, C·T·P·P], image_grid_thw [I, 3]

The chat template renders each turn; ``<|image_pad|>`` is repeated once per merged image
token (`lmforge.vision.processor.expand_image_placeholders`); only the assistant turns are
labelled (−100 elsewhere). Packing never splits an example: examples are placed in order
(shuffled per epoch) into rows of ``seq_len`` tokens, each its own document (positions
restart, no attention across examples), and the images of a batch are concatenated in the
order their placeholders appear (row by row), as the model consumes them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.pointer_head import Box
from lmforge.tokenizer import SpecialTokens, Tokenizer
from lmforge.vision.processor import (
    IMAGE_PAD,
    QWEN2_VL_CHAT_TEMPLATE,
    VISION_END,
    VISION_START,
    ImageInputError,
    ImageProcessor,
    ImageSource,
    expand_image_placeholders,
    flatten_image_messages,
)
from lmforge.vision.vlm_tasks import QUESTIONS, VQAExample, answer_vocabulary

VLM_SPECIAL_TOKENS = SpecialTokens(
    extra=("<|im_start|>", "<|im_end|>", VISION_START, IMAGE_PAD, VISION_END)
)


@dataclass
class MultimodalExample:
    """One tokenized chat: ids, labels (−100 outside assistant turns), its images' patches
    ``[n, C·T·P·P]`` and grids ``[k, 3]``."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    # pointer queries (`PointerQuery`, resolved): token index, image index in this example,
    # normalised target box — one per pointed coordinate pair
    pointer_positions: list[int] = field(default_factory=list)
    pointer_images: list[int] = field(default_factory=list)
    pointer_boxes: list[Box] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def message_text(message: dict) -> str:
    """A chat message's text: its ``content`` string, or its text parts joined."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


@dataclass(frozen=True)
class PointerQuery:
    """A point for the pointer head (`lmforge.models.pointer_head`) in a chat: in assistant
    message ``message`` (index into the messages), the query is the token that ends the
    content's first ``offset`` characters (e.g. up to ``click(``); its target is ``box``
    (normalised x0, y0, x1, y1) on image ``image`` (index into the chat's images)."""

    message: int
    offset: int
    image: int
    box: Box


def _split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def encode_chat(
    tokenizer: Any,
    processor: ImageProcessor,
    messages: Sequence[dict],
    images: Sequence[ImageSource],
    pointers: Sequence[PointerQuery] = (),
) -> MultimodalExample:
    """Render ``messages`` turn by turn with the tokenizer's chat template, expand the image
    placeholders for ``images`` (in order), and label the assistant turns.

    Each of ``pointers`` splits its assistant message's text at the query (the two sides are
    tokenized apart, so a token ends exactly there: byte-level BPE never merges across
    ``(`` and a digit anyway) and records the query's token index, image and box."""
    pixel_values, grid = processor(list(images))
    counts = processor.tokens_per_image(grid)
    messages = flatten_image_messages(messages)
    ids: list[int] = []
    labels: list[int] = []
    done, used = "", 0
    queries: dict[int, list[PointerQuery]] = {}
    for q in pointers:
        if not 0 <= q.message < len(messages) or messages[q.message]["role"] != "assistant":
            raise ValueError(f"pointer query {q}: message {q.message} is not an assistant turn")
        if not 0 <= q.image < len(counts):
            raise ValueError(f"pointer query {q}: the chat has {len(counts)} images")
        queries.setdefault(q.message, []).append(q)
    positions: list[tuple[int, int, Box]] = []
    for k, message in enumerate(messages):
        upto = tokenizer.apply_chat_template(list(messages[: k + 1]))
        cuts: list[int] = []
        if message["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(list(messages[:k]), add_generation_prompt=True)
            segments = [(prefix[len(done) :], False), (upto[len(prefix) :], True)]
            if k in queries:
                content = message_text(message)
                start = segments[1][0].find(content)
                if start < 0:
                    raise ValueError(f"message {k}: its rendered text does not contain its content")
                mine = sorted(queries[k], key=lambda q: q.offset)
                if any(not 0 < q.offset <= len(content) for q in mine):
                    raise ValueError(f"message {k}: pointer offsets must lie in 1..{len(content)}")
                cuts = [start + q.offset for q in mine]
        else:
            segments = [(upto[len(done) :], False)]
        for text, trained in segments:
            n = text.count(IMAGE_PAD)
            if used + n > len(counts):
                raise ImageInputError(
                    f"the chat has more image placeholders than the {len(counts)} images given"
                )
            text = expand_image_placeholders(text, counts[used : used + n])
            used += n
            parts = _split_at(text, cuts) if trained and cuts else [text]
            for j, part in enumerate(parts):
                piece = tokenizer.encode(part)
                ids.extend(piece)
                labels.extend(piece if trained else [IGNORE_INDEX] * len(piece))
                if j < len(parts) - 1:
                    q = mine[j]
                    positions.append((len(ids) - 1, q.image, q.box))
        done = upto
    if used != len(counts):
        raise ImageInputError(
            f"{len(counts)} images but {used} image placeholders in the chat: more images than "
            "placeholders"
        )
    return MultimodalExample(ids, labels, pixel_values, grid, [p for p, _, _ in positions],
                             [i for _, i, _ in positions], [b for _, _, b in positions])  # fmt: skip


def pack_examples(
    examples: Sequence[MultimodalExample], seq_len: int, pad_id: int
) -> list[list[int]]:
    """Greedy in-order packing: the indices of the examples in each row of ``seq_len``
    tokens (an example longer than ``seq_len`` is a `ValueError` naming it)."""
    rows: list[list[int]] = []
    used = seq_len
    for i, ex in enumerate(examples):
        if len(ex) > seq_len:
            raise ValueError(f"example {i} has {len(ex)} tokens > seq_len={seq_len}")
        if used + len(ex) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += len(ex)
    return rows


def collate_rows(
    examples: Sequence[MultimodalExample], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """A batch of packed rows: ids, labels, document ids (padding is its own document,
    unlabelled) and the rows' images concatenated in placeholder order; the examples' pointer
    queries as ``pointer_queries [Q, 2]`` (row, position), ``pointer_images [Q]`` (index into
    the batch's images) and ``pointer_boxes [Q, 4]`` (normalised)."""
    b = len(rows)
    ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    docs = torch.zeros((b, seq_len), dtype=torch.long)
    pixels, grids = [], []
    queries, images, boxes = [], [], []
    image_count = 0
    for r, row in enumerate(rows):
        p = 0
        for d, i in enumerate(row):
            ex = examples[i]
            n = len(ex)
            queries += [(r, p + t) for t in ex.pointer_positions]
            images += [image_count + j for j in ex.pointer_images]
            boxes += list(ex.pointer_boxes)
            image_count += ex.image_grid_thw.shape[0]
            ids[r, p : p + n] = torch.tensor(ex.input_ids)
            labels[r, p : p + n] = torch.tensor(ex.labels)
            docs[r, p : p + n] = d
            p += n
            pixels.append(ex.pixel_values)
            grids.append(ex.image_grid_thw)
        docs[r, p:] = len(row)
    return {
        "input_ids": ids,
        "labels": labels,
        "document_ids": docs,
        "pixel_values": torch.cat(pixels) if pixels else torch.zeros(0),
        "image_grid_thw": torch.cat(grids) if grids else torch.zeros(0, 3, dtype=torch.long),
        "pointer_queries": torch.tensor(queries, dtype=torch.long).view(-1, 2),
        "pointer_images": torch.tensor(images, dtype=torch.long),
        "pointer_boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
    }


def train_vqa_tokenizer(tasks: Sequence[str], vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer for the VQA tasks (`lmforge.tokenizer.Tokenizer.train` on
    their questions, answers and the chat frame), with the vision special tokens and
    Qwen2-VL's chat template."""
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"]
    texts += [q for t in tasks for q in QUESTIONS[t]] * 20
    texts += [" ".join(answer_vocabulary(tasks))] * 20 + answer_vocabulary(tasks) * 20
    return Tokenizer.train(texts, vocab_size=vocab_size, min_frequency=1,
                           special_tokens=VLM_SPECIAL_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip


def encode_prompt(
    tokenizer: Any,
    processor: ImageProcessor,
    messages: Sequence[dict],
    images: Sequence[ImageSource],
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """A generation prompt: ids (placeholders expanded), ``pixel_values``, ``image_grid_thw``."""
    pixel_values, grid = processor(list(images))
    text = tokenizer.apply_chat_template(
        flatten_image_messages(messages), add_generation_prompt=True
    )
    text = expand_image_placeholders(text, processor.tokens_per_image(grid))
    return tokenizer.encode(text), pixel_values, grid


@torch.no_grad()
def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of equal ``lengths`` in batches of at most ``batch_size`` (prompts that can run
    together without padding), in first-seen order of the lengths."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def answer_questions(
    model: Any,
    tokenizer: Any,
    processor: ImageProcessor,
    examples: Sequence[VQAExample],
    max_new_tokens: int = 4,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers of ``model`` to each example's question (prompts of equal length are
    generated together), decoded up to the end-of-turn token."""
    stop = tokenizer.token_to_id("<|im_end|>")
    prompts = [
        encode_prompt(tokenizer, processor, ex.messages()[:-1], ex.images) for ex in examples
    ]
    answers = [""] * len(examples)
    for part in length_batches([len(ids) for ids, _, _ in prompts], batch_size):
        ids = torch.tensor([prompts[i][0] for i in part])
        out = model.generate(
            ids,
            pixel_values=torch.cat([prompts[i][1] for i in part]),
            image_grid_thw=torch.cat([prompts[i][2] for i in part]),
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
        )
        for i, row in zip(part, out[:, ids.shape[1] :].tolist(), strict=True):
            row = row[: row.index(stop)] if stop in row else row
            answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


class MultimodalPackedLoader:
    """Endless packed batches for the `Trainer`: each epoch shuffles the examples (seeded),
    packs them into rows and serves *global batches* of ``batch_size × world_size`` rows (the
    last partial one of an epoch is dropped unless it is the only one); rank ``r`` keeps rows
    ``[r·batch_size, (r+1)·batch_size)`` of each — as `lmforge.data.loader`'s loaders, ranks
    are disjoint and together see what one process with ``batch_size × world_size`` rows
    would (an epoch shorter than one global batch is dealt round robin, ``rows[r::world]``;
    one with fewer rows than ranks goes whole to every rank: a tiny validation set's mean loss
    stays exact, as the `Trainer` sums losses and counts over the ranks).
    ``state_dict`` / ``load_state_dict`` hold (epoch, batch index) for exact resume."""

    def __init__(
        self,
        examples: Sequence[MultimodalExample],
        seq_len: int,
        batch_size: int,
        pad_id: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not examples:
            raise ValueError("no multimodal examples to train on")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.examples = list(examples)
        self.seq_len, self.batch_size, self.pad_id = seq_len, batch_size, pad_id
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        self._rows = self._epoch_rows(0)
        self.rows_per_epoch = len(self._rows)
        self.global_batch_size = batch_size * world_size

    def _epoch_rows(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        packed = pack_examples([self.examples[i] for i in order], self.seq_len, self.pad_id)
        return [[order[j] for j in row] for row in packed]

    def batches_per_epoch(self) -> int:
        return max(1, len(self._rows) // self.global_batch_size)

    def rank_rows(self, index: int) -> list[list[int]]:
        """This rank's rows of global batch ``index`` of the current epoch."""
        if len(self._rows) < self.world_size:  # too few to share: every rank all (same mean)
            return self._rows
        if len(self._rows) < self.global_batch_size:  # the epoch's only, partial batch
            return self._rows[self.rank :: self.world_size]
        start = index * self.global_batch_size + self.rank * self.batch_size
        return self._rows[start : start + self.batch_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if self.index >= self.batches_per_epoch():
                self.epoch, self.index = self.epoch + 1, 0
                self._rows = self._epoch_rows(self.epoch)
            rows = self.rank_rows(self.index)
            self.index += 1
            yield self.collate(rows)

    def collate(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """The batch of ``rows`` (each a packed row's example indices); subclasses add
        fields here (e.g. `lmforge.agents.glyph.GlyphPackedLoader`)."""
        return collate_rows(self.examples, rows, self.seq_len, self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict`; the global batch (rows per step over all ranks) must
        be the one it was saved with, as the index counts global batches."""
        saved = state.get("global_batch_size", self.global_batch_size)
        if saved != self.global_batch_size:
            raise ValueError(f"cannot resume this loader: it was saved with {saved} rows per "
                             f"global batch, now {self.global_batch_size} (batch_size × ranks)")  # fmt: skip
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._rows = self._epoch_rows(self.epoch)


__all__ = [
    "VLM_SPECIAL_TOKENS",
    "MultimodalExample",
    "MultimodalPackedLoader",
    "PointerQuery",
    "answer_questions",
    "collate_rows",
    "encode_chat",
    "encode_prompt",
    "length_batches",
    "message_text",
    "pack_examples",
    "train_vqa_tokenizer",
]
