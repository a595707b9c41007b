"""Greedy decoding of a left-padded batch through the `Engine`, in Hugging Face's layout.

`lmforge.infer.generate.generate` (greedy rows) and `lmforge.infer.beam.beam_search`
(``num_beams=1``, which HF decodes greedily) both end here. Each prompt runs unpadded in the
paged engine (positions from 0, as HF derives them from the mask) and leaves the batch when
it ends; the result is put back in HF's shape: a row's end-of-sequence token is kept, then
``pad_id`` fills it to the longest row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lmforge.infer.checks import eval_mode
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams

if TYPE_CHECKING:
    from lmforge.models.transformer import CausalLM


def greedy_generate(
    model: CausalLM,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    min_new_tokens: int,
    eos_ids: list[int] | None,
    pad_id: int | None,
) -> torch.LongTensor:
    """``[B, T + n]``: the left-padded ``input_ids`` ``[B, T]`` (``mask`` 1 = token) and their
    greedy continuations, n ≤ ``max_new_tokens``; end-of-sequence ids are suppressed until a
    row has ``min_new_tokens`` tokens. The model runs in eval mode (its modes are restored).
    Arguments are checked by the caller (`lmforge.infer.checks`)."""
    if max_new_tokens == 0:
        return input_ids.clone()
    prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    params = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=0,
        ignore_eos=True,  # the ids that end a row are exactly ``eos_ids``
        stop_token_ids=tuple(eos_ids or ()),
        min_tokens=min_new_tokens,
    )
    block_size = 16
    per_row = -(-(input_ids.shape[1] + max_new_tokens) // block_size)
    with eval_mode(model):
        engine = Engine(
            model,
            block_size=block_size,
            num_blocks=len(prompts) * per_row,
            max_num_seqs=len(prompts),
            max_num_batched_tokens=max(2048, input_ids.shape[1]),
        )
        outs = engine.generate(prompts, params)
    rows = []
    for out in outs:
        ended = [out.stop_reason] if out.finish_reason == "stop" else []
        rows.append(out.token_ids + ended)
    width = max(len(r) for r in rows)
    filled = [r + [pad_id] * (width - len(r)) for r in rows]
    new_tokens = torch.tensor(filled, dtype=torch.long, device=input_ids.device)
    return torch.cat([input_ids, new_tokens], dim=1)
