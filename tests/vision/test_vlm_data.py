"""Multimodal SFT records: assistant-only labels, one placeholder per merged image token,
packing several examples per row with their images in placeholder order, exact resume, and
the errors for mismatched images."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.loss import IGNORE_INDEX
from lmforge.models.vlm import image_token_spans
from lmforge.vision.processor import ImageInputError, ImageProcessor, ImageProcessorConfig
from lmforge.vision.vlm_data import (
    MultimodalPackedLoader,
    answer_questions,
    encode_chat,
    encode_prompt,
    pack_examples,
    train_vqa_tokenizer,
)
from lmforge.vision.vlm_tasks import make_vqa_examples

TASKS = ["colour", "compare"]


@pytest.fixture(scope="module")
def setup():
    tok = train_vqa_tokenizer(TASKS, 400)
    proc = ImageProcessor(ImageProcessorConfig(patch_size=4, min_pixels=64, max_pixels=16 * 16))
    examples = make_vqa_examples(TASKS, 6, 16, 0, "train")
    encoded = [encode_chat(tok, proc, ex.messages(), ex.images) for ex in examples]
    return tok, proc, examples, encoded


def test_labels_cover_exactly_the_answer(setup):
    tok, proc, examples, encoded = setup
    pad = tok.token_to_id("<|image_pad|>")
    for ex, enc in zip(examples, encoded, strict=True):
        labelled = [t for t in enc.labels if t != IGNORE_INDEX]
        assert tok.decode(labelled) == ex.answer + "<|im_end|>\n"
        assert enc.labels[-len(labelled) :] == enc.input_ids[-len(labelled) :]
        assert enc.input_ids.count(pad) == sum(proc.tokens_per_image(enc.image_grid_thw))
        assert enc.image_grid_thw.shape[0] == len(ex.images)
        prompt, _, _ = encode_prompt(tok, proc, ex.messages()[:-1], ex.images)
        assert enc.input_ids[: len(prompt)] == prompt


def test_packing_keeps_every_example_once_and_images_in_order(setup):
    tok, _, _, encoded = setup
    loader = MultimodalPackedLoader(encoded, 96, 2, pad_id=0, seed=3)
    rows = loader._epoch_rows(0)
    assert sorted(i for row in rows for i in row) == list(range(len(encoded)))
    assert all(sum(len(encoded[i]) for i in row) <= 96 for row in rows)
    batch = next(iter(loader))
    ids, grid = batch["input_ids"], batch["image_grid_thw"]
    # the model's own check: every image's placeholder run, in reading order, has its size
    spans = image_token_spans(ids, tok.token_to_id("<|image_pad|>"), (grid.prod(-1) // 4).tolist())
    assert len(spans) == grid.shape[0]
    assert batch["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    first = encoded[rows[0][0]]
    assert ids[0, : len(first)].tolist() == first.input_ids
    assert (batch["document_ids"][0, : len(first)] == 0).all()


def test_loader_resumes_exactly(setup):
    _, _, _, encoded = setup
    a = MultimodalPackedLoader(encoded, 96, 1, seed=1)
    it = iter(a)
    for _ in range(5):
        next(it)
    state = a.state_dict()
    expected = next(it)["input_ids"]
    b = MultimodalPackedLoader(encoded, 96, 1, seed=1)
    b.load_state_dict(state)
    assert torch.equal(next(iter(b))["input_ids"], expected)


def test_ranks_share_each_global_batch(setup):
    """Under DDP rank r trains rows [r·b, (r+1)·b) of each global batch: the ranks are
    disjoint and together are the one-process loader with b × world rows per batch."""
    _, _, _, encoded = setup
    one = iter(MultimodalPackedLoader(encoded, 96, 2, seed=5))
    loaders = [MultimodalPackedLoader(encoded, 96, 1, seed=5, rank=r, world_size=2) for r in (0, 1)]
    ranks = [iter(loader) for loader in loaders]
    assert loaders[0].rows_per_epoch >= 4  # so the epochs hold several global batches
    for _ in range(7):  # crosses epochs
        whole = next(one)["input_ids"]
        parts = [next(it)["input_ids"] for it in ranks]
        assert torch.equal(torch.cat(parts), whole)
        mine = [
            {i for row in loader.rank_rows(loader.index - 1) for i in row} for loader in loaders
        ]
        assert mine[0] and mine[1] and not mine[0] & mine[1]


def test_short_epoch_is_dealt_round_robin_or_given_whole(setup):
    _, _, _, encoded = setup
    rows = len(MultimodalPackedLoader(encoded, 96, 1, shuffle=False)._epoch_rows(0))
    world = rows - 1  # fewer rows than one global batch of 2 per rank
    got = [MultimodalPackedLoader(encoded, 96, 2, shuffle=False, rank=r, world_size=world)
           for r in range(world)]  # fmt: skip
    dealt = [row for loader in got for row in loader.rank_rows(0)]
    assert sorted(i for row in dealt for i in row) == list(range(len(encoded)))
    assert all(0 < len(loader.rank_rows(0)) <= 2 for loader in got)
    few = MultimodalPackedLoader(encoded, 96, 1, shuffle=False, rank=rows, world_size=rows + 1)
    assert few.rank_rows(0) == got[0]._rows  # fewer rows than ranks: every rank has them all
    with pytest.raises(ValueError, match="rank=2"):
        MultimodalPackedLoader(encoded, 96, 1, rank=2, world_size=2)


def test_resume_refuses_another_global_batch(setup):
    _, _, _, encoded = setup
    state = MultimodalPackedLoader(encoded, 96, 2, seed=1).state_dict()
    other = MultimodalPackedLoader(encoded, 96, 2, seed=1, rank=1, world_size=2)
    with pytest.raises(ValueError, match="saved with 2 rows per global batch, now 4"):
        other.load_state_dict(state)
    MultimodalPackedLoader(encoded, 96, 1, seed=1, rank=1, world_size=2).load_state_dict(state)


def test_mismatched_images_are_clear_errors(setup):
    tok, proc, examples, _ = setup
    ex = examples[0]
    with pytest.raises(ImageInputError, match="more images than placeholders"):
        encode_chat(tok, proc, ex.messages(), ex.images * 2)
    with pytest.raises(ImageInputError, match="more image placeholders"):
        encode_chat(tok, proc, examples[1].messages(), examples[1].images[:1])
    with pytest.raises(ValueError, match="example 0 has"):
        pack_examples([setup[3][0]], 4, 0)


def test_answer_questions_decodes_greedy_answers(setup):
    """With a stub model that always answers 'red', every answer decodes to 'red'."""
    tok, proc, examples, _ = setup
    answer = tok.encode("red") + [tok.token_to_id("<|im_end|>")]

    class Stub:
        def generate(self, ids, pixel_values, image_grid_thw, max_new_tokens, eos_token_id):
            assert pixel_values.shape[0] == int(image_grid_thw.prod(-1).sum())
            new = torch.tensor(answer[:max_new_tokens]).expand(ids.shape[0], -1)
            return torch.cat([ids, new], dim=1)

    assert answer_questions(Stub(), tok, proc, examples, max_new_tokens=6) == ["red"] * len(
        examples
    )


def _click_chat(ex, answer="Thought: go.\nAction: click(12,3)"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]},
            {"role": "assistant", "content": answer}]  # fmt: skip


def test_pointer_queries_sit_on_the_token_ending_the_prefix(setup):
    from lmforge.vision.vlm_data import PointerQuery, collate_rows

    tok, proc, examples, _ = setup
    ex = examples[0]
    answer = "Thought: go.\nAction: click(12,3)"
    offset = answer.index("(") + 1
    plain = encode_chat(tok, proc, _click_chat(ex, answer), ex.images)
    box = (0.1, 0.2, 0.3, 0.4)
    pointed = encode_chat(tok, proc, _click_chat(ex, answer), ex.images,
                          [PointerQuery(1, offset, 0, box)])  # fmt: skip
    # byte-level BPE never merges across "(" and a digit: the split changes no token
    assert pointed.input_ids == plain.input_ids and pointed.labels == plain.labels
    (p,) = pointed.pointer_positions
    assert tok.decode(pointed.input_ids[: p + 1]).endswith("Action: click(")
    assert pointed.labels[p] != IGNORE_INDEX and pointed.pointer_boxes == [box]
    assert pointed.pointer_images == [0]
    # packed: positions shift by the row offset, images count over the batch
    second = encode_chat(tok, proc, _click_chat(ex, answer), ex.images,
                         [PointerQuery(1, offset, 0, box)])  # fmt: skip
    batch = collate_rows([plain, pointed, second], [[0, 1], [2]], 2 * len(plain), 0)
    assert batch["pointer_queries"].tolist() == [[0, len(plain) + p], [1, p]]
    assert batch["pointer_images"].tolist() == [1, 2]
    assert torch.allclose(batch["pointer_boxes"], torch.tensor([box, box]))
    bad = PointerQuery(0, 1, 0, box)
    with pytest.raises(ValueError, match="not an assistant turn"):
        encode_chat(tok, proc, _click_chat(ex), ex.images, [bad])
    with pytest.raises(ValueError, match="images"):
        encode_chat(tok, proc, _click_chat(ex), ex.images, [PointerQuery(1, 3, 5, box)])
