"""Fine-grained FP8 mixed precision for linear layers (DeepSeek-V3, arXiv:2412.19437, §3.3).

Every GEMM of a linear layer — forward ``y = x Wᵀ`` (Fprop), activation gradient
``∂x = ∂y W`` (Dgrad) and weight gradient ``∂W = ∂yᵀ x`` (Wgrad) — takes E4M3 inputs
(`torch.float8_e4m3fn`, 3 mantissa bits, largest value 448) with scales at a fine grain
(§3.3.2, Fig. 7a):

- activations and gradients: one scale per **1 × 128 tile** along the reduction dimension
  K, ``s = max|tile| / 448``, ``q = E4M3(x / s)``;
- weights: one scale per **128 × 128 block**; the block grid is symmetric, so Dgrad reuses the
  forward's quantised weight transposed;
- Wgrad reduces over tokens, so ``∂y`` and the cached activation are re-quantised in tiles
  along the token dimension (the 128 × 1 tiles of the paper's backward pass).

Accumulation is promoted to fp32 every 128 elements of K (§3.3.2, "Increasing accumulation
precision"): the product of one 128-wide K chunk of the FP8 operands is computed unscaled
(on the tensor core), multiplied by the chunk's two scales and added to an fp32 accumulator
(on the CUDA cores)::

    out[m, n] = Σ_c  s_A[m, c] · s_B[n, c] · Σ_{k ∈ chunk c} q_A[m, k] · q_B[n, k]

The master weights stay fp32 (the module's parameter); the layers the paper keeps in high
precision (embedding, output head, MoE gating, norms, attention softmax) are never converted
(`convert_to_fp8` skips them by name; norms and attention have no ``nn.Linear``).

On CPU the scheme is *simulated*: operands really are rounded to E4M3 (`quantize_tiles`,
`quantize_blocks`) and the chunk products are exact fp32 products of those values. On a CUDA
GPU with FP8 tensor cores (compute capability ≥ 8.9) each chunk product is one
``torch._scaled_mm`` call with fp32 output (the tests run that path on torch's CPU kernel). ``Fp8Recipe(granularity="tensor")`` is the
per-tensor-scaled variant (one scale per operand) kept for contrast: an outlier anywhere in a
tensor pushes every small value of that tensor into E4M3's subnormal range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "Fp8Linear",
    "Fp8LinearFunction",
    "Fp8Recipe",
    "HIGH_PRECISION_MODULES",
    "QuantizedOperand",
    "convert_to_fp8",
    "dequantize_blocks",
    "dequantize_tiles",
    "fp8_gemm",
    "fp8_linear",
    "keeps_high_precision",
    "operand_tiles",
    "operand_weight",
    "pad_to",
    "quantize_blocks",
    "quantize_tensor",
    "quantize_tiles",
    "scale_from_amax",
    "scaled_mm_available",
    "to_e4m3",
    "transpose_weight",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448

# Module names (any component of the qualified name) that stay in high precision (§3.3.1):
# the embedding, the output head (also the MTP modules' shared head) and the MoE router.
HIGH_PRECISION_MODULES = ("embed_tokens", "lm_head", "shared_head", "gate", "router")


@dataclass(frozen=True)
class Fp8Recipe:
    """How a linear layer's GEMMs are quantised.

    ``granularity="tile"`` is DeepSeek-V3's scheme (1 × ``block`` tiles for activations and
    gradients, ``block`` × ``block`` blocks for weights); ``"tensor"`` uses one scale per
    operand. ``block`` is also the fp32 promotion interval along K (the scales must be
    constant within a promoted chunk).
    """

    granularity: Literal["tile", "tensor"] = "tile"
    block: int = 128

    def __post_init__(self) -> None:
        if self.granularity not in ("tile", "tensor"):
            raise ValueError(f"Fp8Recipe.granularity={self.granularity!r}: use 'tile' or 'tensor'")
        if self.block <= 0:
            raise ValueError(f"Fp8Recipe.block={self.block} must be > 0")


@dataclass
class QuantizedOperand:
    """A GEMM operand ``[rows, K]`` in E4M3 with one fp32 scale per (row, K-chunk).

    ``q`` is zero-padded along K to a multiple of ``block``; ``scale`` is ``[rows, K/block]``
    (a weight's block scale repeated over the block's rows, a per-tensor scale over all)."""

    q: torch.Tensor
    scale: torch.Tensor
    k: int  # unpadded K

    def dequantize(self) -> torch.Tensor:
        block = self.q.shape[-1] // self.scale.shape[-1]
        full = self.q.float() * self.scale.repeat_interleave(block, dim=-1)
        return full[..., : self.k]


def pad_to(x: torch.Tensor, multiple: int, dim: int = -1) -> torch.Tensor:
    """``x`` zero-padded along ``dim`` to a multiple of ``multiple`` (zeros change no amax)."""
    extra = -x.shape[dim] % multiple
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """``s = amax / 448`` so the largest magnitude maps to E4M3's largest value (1 for 0)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to E4M3 (round to nearest even; saturating at ±448, which scaling guarantees)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_tiles(x: torch.Tensor, tile: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-1×``tile`` quantisation along the last dim: ``(q [..., K'], scales [..., K'/tile])``.

    ``K' = K`` rounded up to a multiple of ``tile`` (zero padding)."""
    x = pad_to(x.float(), tile)
    tiles = x.unflatten(-1, (-1, tile))
    scale = scale_from_amax(tiles.abs().amax(dim=-1))
    q = to_e4m3(tiles / scale.unsqueeze(-1)).flatten(-2)
    return q, scale


def dequantize_tiles(q: torch.Tensor, scale: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Inverse of `quantize_tiles` (fp32), cut back to ``k`` columns."""
    tile = q.shape[-1] // scale.shape[-1]
    x = (q.float().unflatten(-1, (-1, tile)) * scale.unsqueeze(-1)).flatten(-2)
    return x if k is None else x[..., :k]


def quantize_blocks(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-``block``×``block`` quantisation of a matrix ``[N, K]``:
    ``(q [N', K'], scales [N'/block, K'/block])``, both dims zero-padded to the block."""
    w = pad_to(pad_to(w.float(), block, -1), block, 0)
    n, k = w.shape
    blocks = w.reshape(n // block, block, k // block, block)
    scale = scale_from_amax(blocks.abs().amax(dim=(1, 3)))
    q = to_e4m3(blocks / scale[:, None, :, None]).reshape(n, k)
    return q, scale


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int] | None = None):
    """Inverse of `quantize_blocks` (fp32), cut back to ``shape``."""
    block = q.shape[0] // scale.shape[0]
    full = q.float() * scale.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return full if shape is None else full[: shape[0], : shape[1]]


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor quantisation: ``(q, scale)`` with one scale ``max|x| / 448``."""
    scale = scale_from_amax(x.detach().abs().amax())
    return to_e4m3(x.float() / scale), scale


# ---------------------------------------------------------------------- operands
def operand_tiles(x: torch.Tensor, recipe: Fp8Recipe) -> QuantizedOperand:
    """An activation / gradient operand ``[rows, K]``: per-tile (or per-tensor) scales."""
    b = recipe.block
    if recipe.granularity == "tile":
        q, scale = quantize_tiles(x, b)
    else:
        q, s = quantize_tensor(x)
        q = pad_to(q.float(), b).to(FP8_DTYPE)
        scale = s.expand(x.shape[0], q.shape[-1] // b).contiguous()
    return QuantizedOperand(q, scale, x.shape[-1])


def operand_weight(w: torch.Tensor, recipe: Fp8Recipe) -> QuantizedOperand:
    """A weight operand ``[N, K]``: per-block (or per-tensor) scales, rows padded to blocks."""
    b = recipe.block
    if recipe.granularity == "tile":
        q, blocks = quantize_blocks(w, b)
        scale = blocks.repeat_interleave(b, dim=0)
    else:
        q, s = quantize_tensor(w)
        q = pad_to(pad_to(q.float(), b, -1), b, 0).to(FP8_DTYPE)
        scale = s.expand(q.shape[0], q.shape[1] // b).contiguous()
    return QuantizedOperand(q, scale, w.shape[-1])


# ---------------------------------------------------------------------- the GEMM
def scaled_mm_available(device: torch.device) -> bool:
    """FP8 tensor cores: CUDA compute capability 8.9 (Ada) or 9.0+ (Hopper)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_gemm(a: QuantizedOperand, b: QuantizedOperand, rows_b: int) -> torch.Tensor:
    """``A Bᵀ`` in fp32 for ``A [M, K]``, ``B [N, K]`` quantised with matching K-chunks:
    each chunk's unscaled FP8 product times its scales, accumulated in fp32 (promotion
    every ``block`` elements of K). ``rows_b`` cuts B's row padding off the result."""
    chunks = a.scale.shape[-1]
    block = a.q.shape[-1] // chunks
    if b.scale.shape[-1] != chunks:
        raise ValueError(f"fp8_gemm: K chunks differ ({chunks} vs {b.scale.shape[-1]})")
    m = a.q.shape[0]
    sa, sb = a.scale.t(), b.scale[:rows_b].t()  # [chunks, M], [chunks, N]
    if scaled_mm_available(a.q.device) and m % 16 == 0 and rows_b % 16 == 0:
        out = torch.zeros(m, rows_b, device=a.q.device, dtype=torch.float32)
        one = torch.ones((), device=a.q.device)
        for c in range(chunks):  # one FP8 tensor-core GEMM per chunk (not run on CPU)
            ks = slice(c * block, (c + 1) * block)
            qa, qb = a.q[:, ks].contiguous(), b.q[:rows_b, ks].contiguous()
            part = torch._scaled_mm(qa, qb.t(), one, one, out_dtype=torch.float32)
            out += part * sa[c].unsqueeze(1) * sb[c].unsqueeze(0)
        return out
    # CPU: all chunks' unscaled products at once (products of E4M3 values are exact in fp32),
    # then scaled and summed over the chunks in fp32.
    qa = a.q.float().unflatten(-1, (chunks, block)).transpose(0, 1)  # [chunks, M, block]
    qb = b.q[:rows_b].float().unflatten(-1, (chunks, block)).transpose(0, 1)
    partial = torch.bmm(qa, qb.transpose(1, 2))  # [chunks, M, N]
    partial *= sa.unsqueeze(2)
    partial *= sb.unsqueeze(1)
    return partial.sum(0)


class Fp8LinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` with Fprop, Dgrad and Wgrad in FP8 (`Fp8Recipe`); fp32 out/grads.

    The forward caches the activation *as quantised* (FP8 + tile scales) and the quantised
    weight; Wgrad re-quantises the cached activation along the token dimension."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: Fp8Recipe):
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1])
            xa = operand_tiles(x2, recipe)
            wb = operand_weight(weight, recipe)
            y = fp8_gemm(xa, wb, weight.shape[0])
            if bias is not None:
                y = y + bias.float()
        ctx.save_for_backward(xa.q, xa.scale, wb.q, wb.scale)
        ctx.recipe, ctx.k, ctx.n = recipe, x.shape[-1], weight.shape[0]
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.has_bias = bias is not None
        return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        xq, xs, wq, ws = ctx.saved_tensors
        recipe, k, n = ctx.recipe, ctx.k, ctx.n
        grad_x = grad_w = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.reshape(-1, n).float()
            if ctx.needs_input_grad[0]:  # Dgrad: ∂x = ∂y W, reduction over N
                w_t = transpose_weight(QuantizedOperand(wq, ws, k), n, recipe)
                grad_x = fp8_gemm(operand_tiles(g, recipe), w_t, k)
                grad_x = grad_x.reshape(ctx.x_shape).to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:  # Wgrad: ∂W = ∂yᵀ x, reduction over tokens
                x_cached = QuantizedOperand(xq, xs, k).dequantize()
                grad_w = fp8_gemm(
                    operand_tiles(g.t(), recipe), operand_tiles(x_cached.t(), recipe), k
                ).to(ctx.w_dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g.sum(0).to(ctx.w_dtype)
        return grad_x, grad_w, grad_b, None


def transpose_weight(w: QuantizedOperand, n: int, recipe: Fp8Recipe) -> QuantizedOperand:
    """``Wᵀ [K, N]`` from the forward's quantised ``W [N, K]``: the same E4M3 values, the
    block scales transposed (per-tensor: the one scale) — no re-quantisation."""
    b = recipe.block
    q = w.q[:n, : w.k].t()
    blocks = w.scale[::b]  # [N'/b, K'/b]
    q = pad_to(pad_to(q.float(), b, -1), b, 0).to(FP8_DTYPE)
    scale = blocks.t().repeat_interleave(b, dim=0)[: q.shape[0]]
    return QuantizedOperand(q, scale.contiguous(), n)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    recipe: Fp8Recipe | None = None,
) -> torch.Tensor:
    """Functional FP8 linear layer (for weights that are not ``nn.Linear`` modules, e.g.
    stacked expert weights): `Fp8LinearFunction` with ``recipe`` (default fine-grained)."""
    return Fp8LinearFunction.apply(x, weight, bias, recipe or Fp8Recipe())


class Fp8Linear(nn.Linear):
    """``nn.Linear`` whose GEMMs run in FP8 (`Fp8Recipe`); the parameters (fp32 master
    weights) and their state-dict names are those of ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: Fp8Recipe | None = None, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = recipe or Fp8Recipe()

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Fp8Recipe | None = None) -> Fp8Linear:
        """An `Fp8Linear` sharing ``linear``'s parameter objects (optimizer state, ties)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  recipe=recipe, device="meta")  # fmt: skip
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fp8LinearFunction.apply(x, self.weight, self.bias, self.recipe)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.recipe.granularity}/{self.recipe.block}"


def keeps_high_precision(name: str, keep: Iterable[str] = HIGH_PRECISION_MODULES) -> bool:
    """True if any component of the qualified module ``name`` is in ``keep``."""
    keep = set(keep)
    return any(part in keep for part in name.split("."))


def convert_to_fp8(
    model: nn.Module,
    recipe: Fp8Recipe | None = None,
    keep: Iterable[str] | Callable[[str], bool] = HIGH_PRECISION_MODULES,
) -> list[str]:
    """Swap every ``nn.Linear`` of ``model`` for an `Fp8Linear` sharing its parameters,
    except the high-precision ones (``keep``: names, or a predicate on the qualified name).

    Run it before the optimizer is built or after — the parameter objects are unchanged.
    Already converted layers are left as they are. Returns the converted names."""
    recipe = recipe or Fp8Recipe()
    skip = keep if callable(keep) else (lambda name, k=tuple(keep): keeps_high_precision(name, k))
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name and not skip(name)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear.from_linear(module, recipe))
    return [name for name, _ in targets]
