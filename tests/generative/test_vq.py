"""Vector quantisation: nearest code, straight-through gradients, VQ-VAE losses, the EMA
codebook update, dead-code restarts and perplexity, each against a hand computation."""

from __future__ import annotations

import math

import torch

from lmforge.generative.vq import (
    VectorQuantizer,
    code_counts,
    codebook_perplexity,
    codebook_usage,
    ema_codebook_update,
    nearest_code,
    restart_dead_codes,
    straight_through,
    vq_losses,
)


def test_nearest_code_is_the_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(50, 3, generator=g), torch.randn(7, 3, generator=g)
    brute = torch.tensor([min(range(7), key=lambda j: float(((v - codebook[j]) ** 2).sum()))
                          for v in z])  # fmt: skip
    assert torch.equal(nearest_code(z, codebook), brute)


def test_straight_through_gradient_of_input_equals_gradient_of_output():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, ema=False).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    assert torch.allclose(out.quantized, vq.embed(out.indices), atol=1e-6)  # the code's value
    weights = torch.randn_like(out.quantized)
    loss = (out.quantized * weights).sum()
    grad_out = torch.autograd.grad(loss, out.quantized, retain_graph=True)[0]
    (grad_z,) = torch.autograd.grad(loss, z)
    assert torch.equal(grad_z, grad_out) and torch.equal(grad_z, weights)
    # the codebook gets no gradient through the straight-through path
    x = torch.randn(3, 2, requires_grad=True)
    y = torch.randn(3, 2, requires_grad=True)
    straight_through(x, y).sum().backward()
    assert y.grad is None and torch.equal(x.grad, torch.ones(3, 2))


def test_codebook_and_commitment_losses_match_hand_computation():
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
    e = torch.tensor([[0.0, -1.0], [1.0, 1.0]], requires_grad=True)
    codebook_loss, commitment = vq_losses(z, e)
    hand = ((0.5 - 0) ** 2 + 0 + (2 - 1) ** 2 + (0 - 1) ** 2) / 4
    assert math.isclose(codebook_loss.item(), hand) and math.isclose(commitment.item(), hand)
    codebook_loss.backward()
    assert z.grad is None  # ‖sg[z] − e‖²: only the codes move
    assert torch.allclose(e.grad, 2 * (e - z).detach() / 4)
    e.grad = None
    vq_losses(z, e)[1].backward()
    assert e.grad is None and torch.allclose(z.grad, 2 * (z - e).detach() / 4)


def test_quantizer_loss_terms_and_beta_weighting_in_module():
    torch.manual_seed(1)
    vq = VectorQuantizer(5, 3, ema=False).eval()
    z = torch.randn(2, 3, 2, 2)
    out = vq(z)
    z_q = vq.codebook[out.indices].permute(0, 3, 1, 2)
    assert math.isclose(out.commitment_loss.item(), ((z - z_q) ** 2).mean().item(), rel_tol=1e-6)


def test_ema_update_matches_the_hand_formula():
    decay, eps = 0.9, 1e-5
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    cluster = torch.tensor([1.0, 2.0, 0.5])
    embed_sum = torch.tensor([[0.1, 0.2], [2.0, 2.0], [2.5, 2.5]])
    z = torch.tensor([[0.2, 0.0], [0.0, 0.4], [1.2, 0.8]])
    idx = torch.tensor([0, 0, 1])
    n = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[0.2, 0.4], [1.2, 0.8], [0.0, 0.0]])
    want_cluster = decay * cluster + (1 - decay) * n
    want_sum = decay * embed_sum + (1 - decay) * sums
    total = want_cluster.sum()
    smoothed = (want_cluster + eps) / (total + 3 * eps) * total
    ema_codebook_update(codebook, cluster, embed_sum, z, idx, decay, eps)
    assert torch.allclose(cluster, want_cluster) and torch.allclose(embed_sum, want_sum)
    assert torch.allclose(codebook, want_sum / smoothed[:, None])


def test_ema_quantizer_trains_its_codebook_without_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.5)
    assert not vq.codebook.requires_grad
    z = torch.randn(2, 2, 3, 3)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    vq.init_from_data(flat)
    for row in vq.codebook.detach():  # data init: every code is one of the batch's vectors
        assert (flat - row).abs().sum(1).min() < 1e-6
    assert torch.allclose(vq.embed_sum / vq.cluster_size[:, None], vq.codebook)
    fresh = VectorQuantizer(4, 2, ema=True, decay=0.5).train()
    fresh(z)  # the first training batch initialises, then updates
    assert fresh.initialized.item() == 1 and not torch.equal(fresh.usage, torch.ones(4))
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()
    vq(torch.randn(2, 2, 3, 3))  # evaluation never changes the codebook or its statistics
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_dead_code_restart_moves_only_dead_codes_onto_encoder_outputs():
    torch.manual_seed(0)
    codebook = torch.tensor([[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]])
    usage = torch.tensor([1.0, 0.001, 0.5])
    cluster, embed_sum = usage.clone(), codebook.clone()
    z = torch.tensor([[3.0, 4.0], [5.0, 6.0]])
    restarted = restart_dead_codes(codebook, usage, z, 0.01, cluster, embed_sum)
    assert restarted == 1
    assert torch.equal(codebook[0], torch.zeros(2)) and torch.equal(codebook[2], torch.ones(2))
    assert any(torch.equal(codebook[1], row) for row in z)
    assert (
        usage[1] == 0.01 and cluster[1] == 0.01 and torch.allclose(embed_sum[1], codebook[1] * 0.01)
    )


def test_unused_code_is_restarted_during_training():
    torch.manual_seed(0)
    vq = VectorQuantizer(3, 2, ema=True, decay=0.5, dead_threshold=0.2).train()
    data = torch.randn(1, 2, 4, 4)
    vq(data)
    vq.codebook.data[2] = 100.0  # far from everything: never chosen
    vq.embed_sum[2] = 100.0 * vq.cluster_size[2]
    restarted = sum(vq(data).restarted for _ in range(6))
    assert restarted >= 1 and vq.codebook[2].abs().max() < 100


def test_perplexity_and_usage_of_known_histograms():
    assert math.isclose(codebook_perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])), 4.0)
    assert math.isclose(codebook_perplexity(torch.tensor([0.0, 7.0, 0.0])), 1.0)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert math.isclose(codebook_perplexity(torch.tensor([2.0, 1.0, 1.0, 0.0])), math.exp(h))
    counts = code_counts(torch.tensor([[0, 0], [3, 1]]), 6)
    assert torch.equal(counts, torch.tensor([2.0, 1.0, 0.0, 1.0, 0.0, 0.0]))
    assert math.isclose(codebook_usage(counts), 0.5)


def test_matches_diffusers_vector_quantizer():
    """diffusers' VQModel quantiser (legacy=False: β‖sg[e] − z‖² + ‖e − sg[z]‖²): same codes,
    same straight-through output, same loss and the same gradients to z and the codebook."""
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVQ

    torch.manual_seed(0)
    beta = 0.25
    ref = DiffusersVQ(6, 3, beta, legacy=False, sane_index_shape=True)
    ours = VectorQuantizer(6, 3, ema=False).eval()
    ours.codebook.data.copy_(torch.randn(6, 3))
    ref.embedding.weight.data.copy_(ours.codebook.data)
    z = torch.randn(2, 3, 4, 4)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    zq_ref, loss_ref, (_, _, idx_ref) = ref(z1)
    out = ours(z2)
    loss = beta * out.commitment_loss + out.codebook_loss
    assert torch.equal(out.indices, idx_ref)
    assert torch.allclose(out.quantized, zq_ref, atol=1e-6)
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    w = torch.randn_like(zq_ref)
    ((zq_ref * w).sum() + loss_ref).backward()
    ((out.quantized * w).sum() + loss).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)
    assert torch.allclose(ref.embedding.weight.grad, ours.codebook.grad, atol=1e-6)
