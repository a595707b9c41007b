"""A native-resolution vision transformer (NaViT-style packing) with 2-D RoPE, configured
as Qwen2-VL's vision tower or as Kimi-VL's MoonViT.

    patches [N, C·T·P·P] → Linear (the Conv3d/Conv2d patch embedding) [+ learned position grid
    resampled to each image] → depth × pre-norm block [x + Attn(LN(x)); x + MLP(LN(x))]
    [→ LN] → 2×2 patch merger (LN, concat 4 neighbours, Linear-GELU-Linear) → LM width

Images of different sizes are packed into one sequence; attention is block-diagonal
(`cu_seqlens`: patches attend only to patches of their own image, Dehghani et al. 2023,
"Patch n' Pack", §2.2). Positions are 2-D: each head's dims are split between the patch row
and column (axial RoPE, Su et al. 2021 eq. 34 applied per axis). MoonViT (Kimi-VL tech
report §2.1) adds a learned absolute position grid, bicubically resampled to each image's
patch grid, before the blocks.

Two patch layouts: ``merge_blocks`` (Qwen2-VL's processor emits the patches of each 2×2
merge block consecutively) and ``raster`` (MoonViT: row-major; the encoder regroups the
patches into merge blocks before the merger). Parameter names are Qwen2-VL's
(``patch_embed.proj``, ``blocks.{i}.attn.qkv``, ``merger.mlp.0`` …).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ConfigError
from lmforge.nn.rope import rotate

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh", "silu")
ROPE_LAYOUTS = ("hw_halves", "wh_interleaved")
PATCH_ORDERS = ("merge_blocks", "raster")


@dataclass
class VisionConfig:
    """Architecture of the vision encoder (field names follow Qwen2-VL's ``vision_config``
    where it has them). ``out_hidden_size`` is the language model's width (the merger's
    output). ``pos_grid`` > 0 adds MoonViT's learned ``pos_grid × pos_grid`` position table."""

    hidden_size: int = 64  # Qwen2-VL: embed_dim
    depth: int = 2
    num_heads: int = 4
    intermediate_size: int = 256  # Qwen2-VL: embed_dim · mlp_ratio
    hidden_act: str = "quick_gelu"
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 64  # Qwen2-VL: hidden_size
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_layout: str = "hw_halves"
    patch_order: str = "merge_blocks"
    fused_qkv: bool = True
    patch_bias: bool = False
    pos_grid: int = 0
    final_norm: bool = False
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        errors = []
        for name in ("hidden_size", "depth", "num_heads", "intermediate_size", "in_channels",
                     "patch_size", "temporal_patch_size", "spatial_merge_size", "out_hidden_size"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name}={value!r} must be a positive integer")
        if not errors and self.hidden_size % self.num_heads:
            errors.append(f"hidden_size={self.hidden_size} not divisible by num_heads")
        elif not errors and (self.hidden_size // self.num_heads) % 4:
            errors.append("head dim (hidden_size / num_heads) must be a multiple of 4 (2-D RoPE)")
        for name, allowed in (("hidden_act", ACTIVATIONS), ("rope_layout", ROPE_LAYOUTS),
                              ("patch_order", PATCH_ORDERS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                errors.append(f"{name}={getattr(self, name)!r} (allowed: {allowed})")
        if errors:
            raise ConfigError("invalid VisionConfig: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Width of one flattened patch: C · T · P · P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def to_dict(self) -> dict:
        return asdict(self)


def activation(name: str):
    """The MLP non-linearity by its HF name (``quick_gelu`` = x·σ(1.702x), CLIP's)."""
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "silu": F.silu}[name]


# ---------------------------------------------------------------------- packing geometry
def patch_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """int32 cumulative patch counts ``[num_images + 1]``: image i owns patches
    ``cu[i]:cu[i+1]`` of the packed sequence (t·h·w patches each; frames of a clip attend
    to each other)."""
    counts = grid_thw.prod(-1)
    return F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)


def patch_rows_cols(grid_thw: torch.Tensor, merge: int, order: str) -> torch.Tensor:
    """Each patch's (row, col) in its image's patch grid, ``[N, 2]`` long, in the packed
    order: ``raster`` (row-major) or ``merge_blocks`` (row-major over merge×merge blocks,
    row-major inside a block)."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h, 1).expand(h, w)
        cols = torch.arange(w).view(1, w).expand(h, w)
        if order == "merge_blocks":
            shape = (h // merge, merge, w // merge, merge)
            rows = rows.reshape(shape).transpose(1, 2)
            cols = cols.reshape(shape).transpose(1, 2)
        rc = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)
        out.append(rc.repeat(t, 1))
    return torch.cat(out).to(grid_thw.device)


def raster_to_merge_blocks(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Permutation ``[N]`` taking raster-ordered patches to merge-block order (so each
    merge×merge block's patches are consecutive, as the merger reads them)."""
    index, start = [], 0
    for t, h, w in grid_thw.tolist():
        grid = torch.arange(t * h * w).view(t, h // merge, merge, w // merge, merge)
        index.append(grid.permute(0, 1, 3, 2, 4).reshape(-1) + start)
        start += t * h * w
    return torch.cat(index).to(grid_thw.device)


def block_diagonal_mask(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean ``[N, N]``: True where query and key patches belong to the same image."""
    image = torch.searchsorted(cu_seqlens[1:].long(), torch.arange(n, device=cu_seqlens.device),
                               right=True)  # fmt: skip
    return image[:, None] == image[None, :]


def image_batching(grid_thw: torch.Tensor, cu_seqlens: torch.Tensor, n: int):
    """How attention keeps images apart: the number of images when they all have the same
    patch count (attention then runs as a batch, no mask), else the `block_diagonal_mask`."""
    counts = grid_thw.prod(-1)
    if bool((counts == counts[0]).all()):
        return len(grid_thw)
    return block_diagonal_mask(cu_seqlens, n)


# ---------------------------------------------------------------------- 2-D RoPE
def axial_rope_tables(
    rows_cols: torch.Tensor, head_dim: int, theta: float, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[N, head_dim]`` of axial 2-D RoPE: a quarter of the head's frequencies
    θ_i = theta^(−4i/head_dim) turns with the row, the same ones with the column.

    ``hw_halves`` (Qwen2-VL) lays the angles out as [row angles ; column angles],
    ``wh_interleaved`` (MoonViT) as [col₀, row₀, col₁, row₁, …]; both then repeat for
    the rotate-half pairing."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
    freqs = rows_cols.float()[..., None] * inv_freq.to(rows_cols.device)  # [N, 2, D/4]
    if layout == "hw_halves":
        half = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
    else:
        half = freqs.flip(1).transpose(1, 2).reshape(freqs.shape[0], -1)
    emb = torch.cat([half, half], dim=-1)
    return emb.cos(), emb.sin()


# ---------------------------------------------------------------------- blocks
class VisionAttention(nn.Module):
    """Bidirectional multi-head attention over packed patches, block-diagonal by image."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        if config.fused_qkv:
            self.qkv = nn.Linear(d, 3 * d, bias=True)
        else:
            self.q_proj = nn.Linear(d, d, bias=True)
            self.k_proj = nn.Linear(d, d, bias=True)
            self.v_proj = nn.Linear(d, d, bias=True)
        self.proj = nn.Linear(d, d, bias=True)

    def forward(self, x, cos, sin, mask) -> torch.Tensor:
        """``mask``: a boolean ``[N, N]`` same-image mask, or an int I = the patches are I
        equal-sized images (attention as a batch)."""
        n = x.shape[0]
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        else:
            shape = (n, self.num_heads, self.head_dim)
            q, k, v = (
                self.q_proj(x).view(shape),
                self.k_proj(x).view(shape),
                self.v_proj(x).view(shape),
            )
        cos, sin = cos[:, None].float(), sin[:, None].float()
        q = rotate(q.float(), cos, sin).to(v.dtype)
        k = rotate(k.float(), cos, sin).to(v.dtype)
        if isinstance(mask, int):  # all images equal-sized: a batch of ``mask`` images
            q, k, v = (z.view(mask, -1, *z.shape[1:]).transpose(1, 2) for z in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)  # [I, H, n, D]
            return self.proj(out.transpose(1, 2).reshape(n, -1))
        q, k, v = (z.transpose(0, 1)[None] for z in (q, k, v))  # [1, H, N, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out[0].transpose(0, 1).reshape(n, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then h + MLP(LN(h))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x, cos, sin, mask) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """2×2 patch merger + MLP projector: LN per patch, concatenate each merge block's
    merge² patches, Linear-GELU-Linear into the LM width (Qwen2-VL's ``merger``; Kimi-VL's
    pixel-shuffle + ``mm_projector`` compute the same thing)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.width = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(self.width, self.width),
            nn.GELU(),
            nn.Linear(self.width, config.out_hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.width))


class PositionGrid(nn.Module):
    """MoonViT's learned absolute positions: a ``[G, G, D]`` table resampled (bicubic,
    ``align_corners=False``) to each image's ``h × w`` patch grid and added to the patch
    embeddings."""

    def __init__(self, side: int, dim: int) -> None:
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.zeros(side, side, dim))

    def forward(self, grid_thw: torch.Tensor, order: str, merge: int) -> torch.Tensor:
        table = self.position_embeddings.permute(2, 0, 1)[None].float()  # [1, D, G, G]
        out = []
        for t, h, w in grid_thw.tolist():
            if (h, w) == tuple(table.shape[2:]):
                grid = table[0]
            else:
                grid = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)[0]
            if order == "merge_blocks":
                grid = grid.view(-1, h // merge, merge, w // merge, merge).permute(0, 1, 3, 2, 4)
            out.append(grid.reshape(grid.shape[0], -1).t().repeat(t, 1))
        return torch.cat(out).to(self.position_embeddings.dtype)


class PatchEmbedding(nn.Module):
    """The patch projection: a ``Conv3d`` with kernel = stride = (T, P, P) over one patch is a
    linear map of the flattened patch, so it runs as one matmul; the weight keeps the
    convolution's shape ``[D, C, T, P, P]`` (Qwen2-VL's checkpoints, and checkpoints resume
    by shape)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        c = config
        shape = (c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.weight, std=c.initializer_range)
        self.bias = nn.Parameter(torch.zeros(c.hidden_size)) if c.patch_bias else None

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches, self.weight.flatten(1), self.bias)


class VisionEncoder(nn.Module):
    """Packed patches ``[N, C·T·P·P]`` and their grids ``image_grid_thw`` ``[I, 3]`` (t, h, w
    in patches) → merged image tokens ``[N / merge², out_hidden_size]`` in image order."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Module()
        self.patch_embed.proj = PatchEmbedding(config)
        self.pos_grid = (
            PositionGrid(config.pos_grid, config.hidden_size) if config.pos_grid else None
        )
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if config.final_norm else None
        )
        self.merger = PatchMerger(config)

    def check_grid(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> None:
        """Errors naming the mismatch instead of a reshape failure deep inside."""
        c, m = self.config, self.config.spatial_merge_size
        if grid_thw.ndim != 2 or grid_thw.shape[-1] != 3:
            raise ValueError(f"image_grid_thw must be [num_images, 3], got {tuple(grid_thw.shape)}")
        if bool((grid_thw[:, 1:] % m).any()):
            raise ValueError(
                f"image_grid_thw heights/widths must be multiples of {m}: {grid_thw.tolist()}"
            )
        expected = int(grid_thw.prod(-1).sum())
        if pixel_values.ndim != 2 or pixel_values.shape != (expected, c.patch_dim):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}, expected ({expected}, "
                f"{c.patch_dim}) = (Σ t·h·w over image_grid_thw, C·T·P·P)"
            )

    def hidden_states(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The blocks' output ``[N, hidden_size]`` per patch, in the input order."""
        c = self.config
        self.check_grid(pixel_values, grid_thw)
        x = self.patch_embed.proj(pixel_values.to(self.patch_embed.proj.weight.dtype))
        if self.pos_grid is not None:
            x = x + self.pos_grid(grid_thw, c.patch_order, c.spatial_merge_size).to(x.dtype)
        rows_cols = patch_rows_cols(grid_thw, c.spatial_merge_size, c.patch_order)
        cos, sin = axial_rope_tables(rows_cols, c.head_dim, c.rope_theta, c.rope_layout)
        cu = patch_cu_seqlens(grid_thw)
        mask = image_batching(grid_thw, cu, x.shape[0])
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(pixel_values, grid_thw)
        if self.config.patch_order == "raster":
            x = x[raster_to_merge_blocks(grid_thw, self.config.spatial_merge_size)]
        return self.merger(x)

    def tokens_per_image(self, grid_thw: torch.Tensor) -> list[int]:
        """Merged tokens each image contributes to the text: t·h·w / merge²."""
        return (grid_thw.prod(-1) // self.config.spatial_merge_size**2).tolist()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, initializer_range²) weights, zero biases, unit norm gains."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, PatchEmbedding)):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.pos_grid is not None:
            nn.init.normal_(self.pos_grid.position_embeddings, std=std)


__all__ = [
    "PatchEmbedding",
    "PatchMerger",
    "PositionGrid",
    "VisionBlock",
    "VisionConfig",
    "VisionEncoder",
    "axial_rope_tables",
    "block_diagonal_mask",
    "image_batching",
    "patch_cu_seqlens",
    "patch_rows_cols",
    "raster_to_merge_blocks",
]
