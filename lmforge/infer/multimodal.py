"""Image inputs in the engine: a request's images, their vision features (computed once per
request), M-RoPE positions and prefix-cache identity, and one forward's multimodal inputs.

    images = ImageInputs(pixel_values, image_grid_thw)          # from lmforge.vision.processor
    engine.add_request(prompt_ids, params, images=images)      # placeholders expanded in prompt

A request's prompt holds one ``config.image_token_id`` placeholder per merged image token
(`lmforge.models.vlm.image_token_spans` checks runs against the grids). The engine keeps a
`RequestImages` beside the request:

* **features once**: the encoder runs the first time a scheduled chunk covers a placeholder
  (never when the prefix cache already holds every image block) and its output
  ``[Σ tokens, hidden]`` stays with the request, so chunked prefill and recompute after
  preemption reuse it instead of encoding again;
* **positions**: Qwen2-VL's M-RoPE ids (§2.1 of Wang et al. 2024, arXiv:2409.12191) of the
  prompt come from `lmforge.models.vlm.mrope_position_ids`; token ``i`` after the prompt
  sits at ``i + delta`` on all three axes, ``delta`` = (largest prompt id + 1) − prompt
  length — exactly the ids a full forward over prompt + generated tokens gives them.
  The KV-cache slot of a token stays its index ``i``: attention masks use indices, RoPE
  uses these ids;
* **prefix caching**: a full KV block overlapping an image is keyed by the image's content
  hash (`image_digest`: grid + pixel bytes) besides its token ids — the placeholder ids
  are the same for every image, so without the hash a different image would reuse the
  wrong K/V. Blocks before the first image are plain text blocks (shared with text-only
  requests); every block after an image differs through the chained parent hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from lmforge.models.transformer import lm_output
from lmforge.models.vlm import image_token_spans, mrope_position_ids

__all__ = [
    "ImageInputs",
    "MultimodalBatch",
    "RequestImages",
    "check_no_placeholders",
    "image_digest",
    "is_multimodal_model",
    "request_images",
]


@dataclass
class ImageInputs:
    """A request's images as the processor returns them: ``pixel_values`` ``[N, C·T·P·P]``
    (all images' patches, in order) and ``image_grid_thw`` ``[I, 3]`` (t, h, w in patches)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def is_multimodal_model(model: torch.nn.Module) -> bool:
    """True for a vision-language model (`lmforge.models.vlm.VisionLanguageModel`)."""
    return callable(getattr(model, "image_features", None)) and hasattr(model, "visual")


def image_digest(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> str:
    """SHA-256 of one image's grid and patch bytes (float32): its prefix-cache identity."""
    h = hashlib.sha256()
    h.update(repr([int(v) for v in grid_thw.tolist()]).encode())
    h.update(pixel_values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def check_no_placeholders(prompt: list[int], image_token_id: int) -> None:
    """A text-only request must not hold image placeholders (there is nothing to put there)."""
    n = prompt.count(image_token_id)
    if n:
        raise ValueError(
            f"prompt_token_ids holds {n} image placeholder tokens (id {image_token_id}) but "
            "the request has no images"
        )


@dataclass(eq=False)
class RequestImages:
    """One request's images in the engine (see the module docstring)."""

    pixel_values: torch.Tensor | None  # dropped once `features` exist
    grid_thw: torch.Tensor
    spans: list[tuple[int, int]]  # (first prompt index, tokens) of each image
    digests: list[str]
    prompt_positions: torch.Tensor | None  # [3, P] M-RoPE ids (None: 1-D positions)
    delta: int = 0  # position id − index for tokens after the prompt
    features: torch.Tensor | None = None  # [Σ tokens, hidden], computed once
    num_encodes: int = 0  # how often the encoder ran for this request (1 at most)

    @property
    def block_spans(self) -> tuple[tuple[int, int, str], ...]:
        """(start, end, digest) of each image: what `Sequence.block_keys` hashes in."""
        return tuple((s, s + n, d) for (s, n), d in zip(self.spans, self.digests))

    def feature_rows(self, start: int, n: int) -> tuple[list[int], list[int]]:
        """Offsets in ``[start, start + n)`` that are image tokens, and their feature rows."""
        offsets, rows, base = [], [], 0
        for s, length in self.spans:
            lo, hi = max(s, start), min(s + length, start + n)
            offsets.extend(range(lo - start, hi - start))
            rows.extend(range(base + lo - s, base + hi - s))
            base += length
        return offsets, rows

    def image_features(self, model: torch.nn.Module) -> torch.Tensor:
        """The encoder's output for all of this request's images (computed on first use)."""
        if self.features is None:
            device = next(model.parameters()).device
            self.features = model.image_features(
                self.pixel_values.to(device), self.grid_thw.to(device)
            )
            self.pixel_values = None
            self.num_encodes += 1
        return self.features

    def positions(self, start: int, n: int) -> torch.Tensor:
        """M-RoPE ids ``[3, n]`` of tokens ``start … start + n − 1``."""
        idx = torch.arange(start, start + n)
        out = (idx + self.delta).expand(3, n).clone()
        if self.prompt_positions is not None:
            inside = idx < self.prompt_positions.shape[1]
            out[:, inside] = self.prompt_positions[:, idx[inside]]
        return out


def request_images(
    model: torch.nn.Module, prompt: list[int], images: ImageInputs | None
) -> RequestImages | None:
    """Check ``images`` against ``prompt``'s placeholders (a `ValueError` naming the field)
    and prepare the request's positions and prefix-cache identity (None: a text-only
    request, which on a vision-language model must hold no placeholders)."""
    multimodal = is_multimodal_model(model)
    if images is None:
        if multimodal:
            check_no_placeholders(prompt, model.config.image_token_id)
        return None
    if not multimodal:
        raise ValueError(f"images: {type(model).__name__} is not a vision-language model")
    cfg = model.config
    pixels, grid = images.pixel_values, images.image_grid_thw
    if not isinstance(pixels, torch.Tensor) or not isinstance(grid, torch.Tensor):
        raise ValueError("images: pixel_values and image_grid_thw must be tensors")
    if grid.ndim != 2 or grid.shape[-1] != 3 or grid.shape[0] == 0:
        raise ValueError(f"image_grid_thw must be [num_images ≥ 1, 3], got {tuple(grid.shape)}")
    if grid.dtype.is_floating_point or bool((grid <= 0).any()):
        raise ValueError(f"image_grid_thw must hold positive integers, got {grid.tolist()}")
    grid = grid.long().cpu()
    merge = cfg.vision.spatial_merge_size
    if bool((grid[:, 1:] % merge).any()):
        raise ValueError(f"image_grid_thw heights/widths must be multiples of {merge}: "
                         f"{grid.tolist()}")  # fmt: skip
    patches = grid.prod(-1)
    if pixels.ndim != 2 or pixels.shape != (int(patches.sum()), cfg.vision.patch_dim):
        raise ValueError(
            f"pixel_values has shape {tuple(pixels.shape)}, expected ({int(patches.sum())}, "
            f"{cfg.vision.patch_dim}) = (Σ t·h·w over image_grid_thw, C·T·P·P)"
        )
    if not bool(torch.isfinite(pixels).all()):
        raise ValueError("pixel_values holds NaN or infinite values")
    counts = (patches // merge**2).tolist()
    ids = torch.tensor([prompt])
    try:
        found = image_token_spans(ids, cfg.image_token_id, counts)
    except ValueError as exc:  # "row 0" is the prompt here
        raise ValueError(f"prompt_token_ids and images disagree: {exc}") from None
    spans = [(p, n) for _, p, n in found]
    ends = patches.cumsum(0).tolist()
    digests = [
        image_digest(pixels[end - int(p) : end], g)
        for end, p, g in zip(ends, patches.tolist(), grid)
    ]
    positions, delta = None, 0
    if cfg.positions == "mrope":
        pos, deltas = mrope_position_ids(ids, grid, cfg.image_token_id, merge)
        positions, delta = pos[:, 0], int(deltas[0])
    return RequestImages(pixels, grid, spans, digests, positions, delta)


class MultimodalBatch:
    """One engine forward of a vision-language model over a flattened ragged batch: the
    input embeddings with image features at the placeholders and the RoPE ids of every row
    (M-RoPE ``[3, 1, N]`` or 1-D ``[1, N]``); text-only rows count on from their index."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mrope = model.config.positions == "mrope"
        self.positions: list[torch.Tensor] = []
        self.rows: list[int] = []  # flat rows that take image features
        self.features: list[torch.Tensor] = []

    def add(self, images: RequestImages | None, start: int, n: int, offset: int) -> None:
        """Tokens ``start … start + n − 1`` of one sequence at flat rows ``offset …``."""
        if images is None:
            self.positions.append(torch.arange(start, start + n).expand(3, n))
            return
        self.positions.append(images.positions(start, n))
        offsets, rows = images.feature_rows(start, n)
        if offsets:
            feats = images.image_features(self.model)
            self.rows.extend(offset + o for o in offsets)
            self.features.append(feats[torch.tensor(rows, device=feats.device)])

    def logits(self, input_ids: torch.Tensor, cache, logits_to_keep: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, V]`` of the kept rows (the body on ``inputs_embeds``, then the head)."""
        device = input_ids.device
        x = self.model.model.embed_tokens(input_ids)
        if self.rows:
            rows = torch.tensor(self.rows, device=device)
            x = x.index_copy(0, rows, torch.cat(self.features).to(x.dtype))
        positions = torch.cat(self.positions, dim=1).to(device)
        position_ids = positions[:, None] if self.mrope else positions[:1]
        hidden = self.model.model(inputs_embeds=x[None], position_ids=position_ids, cache=cache)
        return lm_output(hidden, self.model.lm_head, logits_to_keep=logits_to_keep).logits[0]
