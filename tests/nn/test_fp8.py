"""Fine-grained FP8 (DeepSeek-V3 §3.3): E4M3 rounding by hand, tile / block scales, the three
GEMMs against an independent float64 computation of the scheme, the error vs fp32, per-tensor
vs fine-grained on outliers, model conversion, the bf16-moment AdamW, and ``precision=fp8``
through the Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.nn.fp8 import (
    FP8_DTYPE,
    Fp8Linear,
    Fp8Recipe,
    convert_to_fp8,
    dequantize_blocks,
    dequantize_tiles,
    fp8_gemm,
    fp8_linear,
    operand_tiles,
    operand_weight,
    quantize_blocks,
    quantize_tensor,
    quantize_tiles,
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- independent reference
def ref_scale(values: torch.Tensor) -> torch.Tensor:
    amax = values.abs().max().float()
    return amax / 448.0 if amax > 0 else torch.tensor(1.0)


def ref_tiles(x: torch.Tensor, tile: int = 128) -> torch.Tensor:
    """Dequantised float64 [R, K]: one scale per 1×tile run of each row, looped by hand."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for r in range(x.shape[0]):
        for c in range(0, x.shape[1], tile):
            t = x[r, c : c + tile].float()
            s = ref_scale(t)
            out[r, c : c + tile] = (t / s).to(FP8_DTYPE).double() * s.double()
    return out


def ref_blocks(w: torch.Tensor, block: int = 128) -> torch.Tensor:
    out = torch.empty(w.shape, dtype=torch.float64)
    for r in range(0, w.shape[0], block):
        for c in range(0, w.shape[1], block):
            t = w[r : r + block, c : c + block].float()
            s = ref_scale(t)
            out[r : r + block, c : c + block] = (t / s).to(FP8_DTYPE).double() * s.double()
    return out


# ---------------------------------------------------------------- quantisation
def test_e4m3_values_by_hand():
    """Tile [448, 0.3, −17, 0.001] has scale 1: 0.3 = 1.2·2⁻² → 1.25·2⁻² (3 mantissa bits);
    17 = 1.0625·2⁴ is a tie → even mantissa 1.0 → 16; 0.001 is subnormal (step 2⁻⁹) → 2⁻⁹.
    The second tile is the first ×2 (scale 2, same codes); an all-zero tile gets scale 1."""
    x = torch.tensor([[448.0, 0.3, -17.0, 0.001, 896.0, 0.6, -34.0, 0.002, 0, 0, 0, 0]])
    q, scale = quantize_tiles(x, tile=4)
    assert q.dtype == FP8_DTYPE and scale.shape == (1, 3)
    torch.testing.assert_close(scale, torch.tensor([[1.0, 2.0, 1.0]]))
    first = [448.0, 0.3125, -16.0, 2.0**-9]
    expected = torch.tensor([first + [2 * v for v in first] + [0.0] * 4])
    torch.testing.assert_close(dequantize_tiles(q, scale), expected, rtol=0, atol=0)


def test_tile_error_bound():
    """|x − deq(q(x))| ≤ 2⁻⁴|x| (3 mantissa bits, round to nearest) + 2⁻¹⁰·s (subnormals),
    and each tile's largest magnitude maps to ±448 (the scale is amax / 448)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 384, generator=g) * torch.logspace(-4, 3, 384).unsqueeze(0)
    q, scale = quantize_tiles(x, 128)
    back = dequantize_tiles(q, scale)
    s = scale.repeat_interleave(128, dim=-1)
    assert ((x - back).abs() <= 2**-4 * x.abs() + 2**-10 * s + 1e-30).all()
    amax = q.float().abs().unflatten(-1, (3, 128)).amax(-1)
    assert (amax == 448).all()
    assert (x - back).abs().max() > 0  # it really rounds


def test_scale_shapes_and_padding():
    x = torch.randn(3, 5, 300)
    q, scale = quantize_tiles(x)
    assert q.shape == (3, 5, 384) and scale.shape == (3, 5, 3)
    torch.testing.assert_close(scale[1, 2, 2], x[1, 2, 256:].abs().max() / 448)
    assert (q[..., 300:].float() == 0).all()
    w = torch.randn(200, 300)
    qw, sw = quantize_blocks(w)
    assert qw.shape == (256, 384) and sw.shape == (2, 3)
    torch.testing.assert_close(sw[1, 0], w[128:, :128].abs().max() / 448)
    torch.testing.assert_close(
        dequantize_blocks(qw, sw, (200, 300)).double(), ref_blocks(w), rtol=1e-6, atol=0
    )
    qt, st = quantize_tensor(w)
    assert st.shape == () and qt.shape == w.shape


def test_promoted_gemm_matches_float64():
    """The chunked fp32 accumulation of scaled FP8 products = the exact product of the
    dequantised operands (to fp32 rounding)."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(24, 520, generator=g), torch.randn(40, 520, generator=g)
    recipe = Fp8Recipe()
    out = fp8_gemm(operand_tiles(a, recipe), operand_weight(b, recipe), 40)
    assert out.dtype == torch.float32 and out.shape == (24, 40)
    expected = ref_tiles(a) @ ref_blocks(b).t()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- the linear layer
@pytest.fixture
def linear_case():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 20, 300, generator=g)
    w = torch.randn(200, 300, generator=g) / 300**0.5
    b = torch.randn(200, generator=g)
    gy = torch.randn(2, 20, 200, generator=g)
    return x, w, b, gy


def test_three_gemms_follow_the_scheme(linear_case):
    """Fprop, Dgrad and Wgrad each equal the float64 product of the operands quantised as the
    paper prescribes (tiles along K; weight blocks, transposed for Dgrad; ∂y and the cached
    FP8 activation re-tiled along the tokens for Wgrad)."""
    x, w, b, gy = linear_case
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    y = fp8_linear(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
    x2, g2 = x.detach().reshape(-1, 300), gy.reshape(-1, 200)
    x_hat, w_hat = ref_tiles(x2), ref_blocks(w.detach())
    tol = dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        y.reshape(-1, 200).double(), x_hat @ w_hat.t() + b.detach().double(), **tol
    )
    torch.testing.assert_close(gx.reshape(-1, 300).double(), ref_tiles(g2) @ w_hat, **tol)
    wgrad = ref_tiles(g2.t()) @ ref_tiles(x_hat.t().float()).t()
    torch.testing.assert_close(gw.double(), wgrad, **tol)
    torch.testing.assert_close(gb, g2.sum(0))


@pytest.mark.parametrize("granularity", ["tile", "tensor"])
def test_error_vs_fp32_is_fp8_sized(linear_case, granularity):
    """Output and gradients within a few % of fp32 (E4M3 keeps 3 mantissa bits: ≈2⁻⁵ RMS
    relative rounding per operand), and not equal to it."""
    x, w, b, gy = linear_case
    layer = Fp8Linear(300, 200, recipe=Fp8Recipe(granularity))
    ref = nn.Linear(300, 200)
    with torch.no_grad():
        for m in (layer, ref):
            m.weight.copy_(w)
            m.bias.copy_(b)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(xi) for m, xi in zip((layer, ref), xs)]
    for out in outs:
        out.backward(gy)
    pairs = [(outs[0], outs[1]), (xs[0].grad, xs[1].grad), (layer.weight.grad, ref.weight.grad)]
    for got, want in pairs:
        assert 0.005 < rel(got, want) < 0.06
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_fine_grained_beats_per_tensor_on_outliers():
    """Four activation outliers (10⁵ × the typical magnitude) push every other value of a
    per-tensor-scaled operand into E4M3's subnormals (scale 10⁵/448: a unit value becomes
    ≈ 0.0045, two subnormal steps of 2⁻⁹); per-tile scales confine the damage to the
    outliers' own tiles (§3.3.2)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 512, generator=g)
    outlier_rows = torch.tensor([3, 17, 40, 41])
    x[outlier_rows, torch.randint(0, 512, (4,), generator=g)] = 1e5
    w = torch.randn(256, 512, generator=g) / 512**0.5
    exact = x.double() @ w.double().t()
    clean = torch.ones(64, dtype=torch.bool)
    clean[outlier_rows] = False
    small = x.abs() < 100
    errors = {}
    for granularity in ("tile", "tensor"):
        x_hat = operand_tiles(x, Fp8Recipe(granularity)).dequantize()
        y = fp8_linear(x, w, recipe=Fp8Recipe(granularity))
        errors[granularity] = (rel(x_hat[small], x[small]), rel(y[clean], exact[clean]))
    for i in (0, 1):  # the small activations; the outputs of the outlier-free rows
        assert errors["tile"][i] < 0.05 and 3 * errors["tile"][i] < errors["tensor"][i]


def test_recipe_checks():
    with pytest.raises(ValueError, match="granularity"):
        Fp8Recipe("row")
    with pytest.raises(ValueError, match="block"):
        Fp8Recipe(block=0)


# ---------------------------------------------------------------- models and training
def tiny_lm(**overrides):
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              tie_word_embeddings=False)  # fmt: skip
    return CausalLM(preset_config("tiny", **{**kw, **overrides}))


def test_convert_keeps_high_precision_layers_and_parameters():
    model = tiny_lm()
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    ids = torch.arange(24).reshape(2, 12) % 64
    ref = model(ids).logits
    names = convert_to_fp8(model)
    assert "lm_head" not in names and all("embed_tokens" not in n for n in names)
    assert "model.layers.0.self_attn.q_proj" in names and "model.layers.1.mlp.down_proj" in names
    assert isinstance(model.model.layers[0].mlp.gate_proj, Fp8Linear)
    assert type(model.lm_head) is nn.Linear
    assert list(model.state_dict()) == keys
    assert all(p is before[n] for n, p in model.named_parameters())
    assert convert_to_fp8(model) == []  # idempotent
    assert 0 < rel(model(ids).logits, ref) < 0.1

    class Routed(nn.Module):  # an MoE router named "gate" stays high precision
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(8, 4)
            self.proj = nn.Linear(8, 8)

    routed = Routed()
    assert convert_to_fp8(routed) == ["proj"] and type(routed.gate) is nn.Linear


def test_bf16_moment_adamw_matches_torch_adamw():
    from lmforge.train.optim import AdamWLowPrecisionMoments, build_adamw

    torch.manual_seed(0)
    models = [nn.Linear(16, 8) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    opts = [  # (weights decay in all three; biases only in the first two)
        torch.optim.AdamW(models[0].parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95)),
        AdamWLowPrecisionMoments(
            models[1].parameters(), lr=1e-2, weight_decay=0.1, moment_dtype=torch.float32
        ),  # fmt: skip
        build_adamw(models[2], 1e-2, 0.1, moment_dtype=torch.bfloat16),
    ]
    assert isinstance(opts[2], AdamWLowPrecisionMoments)
    assert type(build_adamw(models[0], 1e-2)) is torch.optim.AdamW  # fp32 moments: torch's
    for _ in range(15):
        x = torch.randn(4, 16)
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    torch.testing.assert_close(models[1].weight, models[0].weight, rtol=1e-5, atol=1e-6)
    state = opts[2].state[models[2].weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    assert models[2].weight.dtype == torch.float32
    assert 0 < rel(models[2].weight.detach(), models[0].weight.detach()) < 1e-2


class ProgressionLoader:
    """Endless batches of arithmetic progressions mod 64 (learnable in a few steps); batch
    ``i`` depends on ``(seed, i)`` only, so a resumed run sees the same data."""

    def __init__(self, seed: int = 0, rows: int = 8, seq_len: int = 16):
        self.seed, self.rows, self.seq_len, self.position = seed, rows, seq_len, 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 10_007 + self.position)
            start = torch.randint(0, 64, (self.rows, 1), generator=g)
            stride = torch.randint(1, 4, (self.rows, 1), generator=g)
            ids = (start + stride * torch.arange(self.seq_len)) % 64
            self.position += 1
            yield {"input_ids": ids, "labels": ids.clone()}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def fp8_config(out_dir, steps: int, save_every: int = 0):
    from lmforge.train.config import RunConfig

    config = RunConfig(out_dir=str(out_dir))
    config.train.precision = "fp8"
    config.train.max_steps, config.train.save_every = steps, save_every
    config.train.eval_every = 0
    config.optim.lr, config.optim.warmup_steps = 1e-2, 2
    config.log.progress = config.log.plot = False
    return config


def test_trainer_runs_with_precision_fp8():
    from lmforge.train.config import RunConfig
    from lmforge.train.loop import Trainer
    from lmforge.train.optim import AdamWLowPrecisionMoments

    losses = {}
    for precision in ("fp32", "fp8"):
        config = RunConfig()
        config.train.precision = precision
        config.train.max_steps = 12
        config.train.eval_every = config.train.save_every = 0
        config.optim.lr, config.optim.warmup_steps = 1e-2, 2
        config.log.progress = config.log.plot = False
        trainer = Trainer(tiny_lm(), ProgressionLoader(), config)
        it = iter(trainer.train_data)
        losses[precision] = [trainer.train_step([next(it)])["loss"] for _ in range(12)]
        if precision == "fp8":
            assert isinstance(trainer.raw_model.model.layers[0].self_attn.o_proj, Fp8Linear)
            assert isinstance(trainer.optimizer, AdamWLowPrecisionMoments)
            assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())
    fp8, fp32 = losses["fp8"], losses["fp32"]
    assert fp8[-1] < fp8[0] - 0.3  # it learns
    assert fp8 != fp32 and abs(fp8[-1] - fp32[-1]) < 0.05 * fp32[-1]


def test_fp8_run_resumes_bit_exactly(tmp_path):
    """6 steps straight == 3 steps, a resume from the checkpoint (bf16 moments loaded back),
    3 more: FP8 quantisation is deterministic and the moments survive the round trip."""
    from lmforge.train.loop import Trainer

    straight = Trainer(tiny_lm(), ProgressionLoader(), fp8_config(tmp_path / "a", 6),
                       run_dir=tmp_path / "a")  # fmt: skip
    straight.fit()

    class Stop(Exception):
        pass

    def stop_at_3(trainer, record):
        if trainer.step == 3:
            raise Stop

    config = fp8_config(tmp_path / "b", 6, save_every=3)
    with pytest.raises(Stop):
        Trainer(tiny_lm(), ProgressionLoader(), config, run_dir=tmp_path / "b",
                callbacks=[stop_at_3]).fit()  # fmt: skip
    resumed = Trainer(tiny_lm(), ProgressionLoader(), config, run_dir=tmp_path / "b")
    resumed.fit()
    assert resumed.resumed_from is not None and resumed.step == 6
    for (name, p), q in zip(straight.raw_model.named_parameters(), resumed.raw_model.parameters()):
        assert torch.equal(p, q), name
    state = resumed.optimizer.state[next(resumed.raw_model.parameters())]
    assert state["exp_avg"].dtype == torch.bfloat16


def test_scaled_mm_path_matches_the_simulation(monkeypatch, linear_case):
    """The GPU path (one ``torch._scaled_mm`` per 128-chunk, fp32 out, scales applied on the
    accumulator) run through torch's CPU kernel: same output and gradients as the simulation."""
    import lmforge.nn.fp8 as fp8

    x, w, b, gy = linear_case
    x, w = x[:, :16, :288], w[:192, :288]  # 32 tokens, N = 192, K = 288: multiples of 16
    calls = []
    scaled_mm = torch._scaled_mm

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return scaled_mm(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    results = []
    for tensor_cores in (False, True):
        monkeypatch.setattr(fp8, "scaled_mm_available", lambda device, on=tensor_cores: on)
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fp8_linear(xi, wi)
        y.backward(gy[:, :16, :192])
        results.append((y, xi.grad, wi.grad))
    # Fprop: 3 K-chunks of 128 (K = 288 padded); Dgrad: 2 (N = 192); Wgrad: 1 (32 tokens)
    assert calls == [(32, 128)] * 3 + [(32, 128)] * 2 + [(192, 128)]
    for simulated, tensor_core in zip(*results):
        torch.testing.assert_close(tensor_core, simulated, rtol=1e-5, atol=1e-5)
