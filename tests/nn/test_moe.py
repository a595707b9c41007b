"""DeepSeekMoE: group-limited routing and gate weights against a brute force written here,
grouped expert compute (each expert once, on its tokens only) against every-expert-on-every-
token, the correction bias (selection only, fp32, saved), expert_load, the balance loss."""

from __future__ import annotations

import pytest
import torch

from lmforge.nn.moe import DeepSeekMoE, gate_weights, route, sequence_balance_loss

E, H = 8, 16


def brute_route(scores, bias, k, n_group, topk_group):
    """Per token: score each group by the sum of its two best biased affinities, keep the
    best ``topk_group`` groups, take the ``k`` best experts in them."""
    out = []
    per = E // n_group
    for s in (scores + bias).tolist():
        groups = [sum(sorted(s[g * per : (g + 1) * per], reverse=True)[:2]) for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: -groups[g])[:topk_group]
        allowed = [e for e in range(E) if e // per in kept]
        out.append(sorted(sorted(allowed, key=lambda e: -s[e])[:k]))
    return out


@pytest.mark.parametrize("n_group,topk_group,k", [(4, 2, 3), (2, 1, 2), (1, 1, 4), (4, 4, 1)])
def test_route_matches_brute_force(n_group, topk_group, k):
    g = torch.Generator().manual_seed(k)
    scores = torch.rand(50, E, generator=g)
    bias = 0.3 * torch.randn(E, generator=g)
    got = route(scores, bias, k, n_group, topk_group).sort(-1).values.tolist()
    assert got == brute_route(scores, bias, k, n_group, topk_group)


def test_bias_changes_selection_not_weights():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.5, 0.4, 0.3, 0.6]])
    plain = route(scores, torch.zeros(E), 2, 1, 1)
    bias = torch.zeros(E)
    bias[2] = 1.0  # makes expert 2 the first choice
    biased = route(scores, bias, 2, 1, 1)
    assert set(plain[0].tolist()) == {0, 1} and set(biased[0].tolist()) == {2, 0}
    w = gate_weights(scores, biased, normalize=True, scaling=2.5)
    chosen = scores[0, biased[0]]  # the unbiased affinities of the chosen experts
    torch.testing.assert_close(w[0], chosen / chosen.sum() * 2.5)
    raw = gate_weights(scores, biased, normalize=False, scaling=1.0)
    assert sorted(raw[0].tolist()) == pytest.approx([0.1, 0.9])


def make_moe(**kw):
    torch.manual_seed(0)
    args = dict(n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.0)
    moe = DeepSeekMoE(H, 12, E, 3, **{**args, **kw})
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        moe.gate.e_score_correction_bias.copy_(0.2 * torch.randn(E))
    return moe


@torch.no_grad()
def test_grouped_compute_equals_dense_and_runs_each_expert_once_on_its_tokens():
    moe = make_moe().eval()
    x = torch.randn(2, 10, H)
    calls = {}
    hooks = [
        expert.register_forward_hook(
            lambda m, inp, out, i=i: calls.setdefault(i, []).append(len(inp[0]))
        )
        for i, expert in enumerate(moe.experts)
    ]
    got = moe(x)
    for hook in hooks:
        hook.remove()
    flat = x.reshape(-1, H)
    scores = torch.sigmoid(flat @ moe.gate.weight.T)
    idx = route(scores, moe.gate.e_score_correction_bias, 3, 4, 2)
    w = gate_weights(scores, idx, True, 2.0)
    dense = torch.zeros_like(flat)
    for e in range(E):  # every expert on every token, weighted by its gate (0 if unchosen)
        gate = (w * (idx == e)).sum(-1, keepdim=True)
        dense += gate * moe.experts[e](flat)
    dense += moe.shared_experts(flat)
    torch.testing.assert_close(got.reshape(-1, H), dense, atol=1e-5, rtol=1e-5)
    counts = torch.bincount(idx.flatten(), minlength=E).tolist()
    assert all(len(v) == 1 for v in calls.values())  # each expert at most once
    assert {e: v[0] for e, v in calls.items()} == {e: c for e, c in enumerate(counts) if c}
    assert sum(counts) == 20 * 3 < 20 * E  # not every expert on every token


def test_expert_load_bias_dtype_and_state_dict():
    moe = make_moe()
    assert "expert_load" not in moe.state_dict()
    assert moe.state_dict()["gate.e_score_correction_bias"].dtype == torch.float32
    x = torch.randn(2, 5, H)
    moe.eval()
    moe(x)
    assert moe.expert_load.sum() == 0  # inference does not count
    moe.train()
    moe(x)
    moe(x)
    assert moe.expert_load.sum() == 2 * 10 * 3 and moe.expert_load.dtype == torch.float32
    moe.reset_load()
    assert moe.expert_load.sum() == 0
    moe.to(torch.bfloat16)
    assert moe.gate.weight.dtype == torch.float32
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert moe.experts[0].up_proj.weight.dtype == torch.bfloat16
    assert moe(x.bfloat16()).dtype == torch.bfloat16


def test_gate_gets_gradients_and_balance_loss():
    moe = make_moe(aux_loss_alpha=0.01).train()
    x = torch.randn(3, 6, H)
    moe(x).sum().backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.aux_loss is not None and moe.aux_loss.requires_grad
    moe.eval()
    moe(x)
    assert moe.aux_loss is None


def test_sequence_balance_loss_formula():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 5, E, generator=g)
    idx = torch.stack([torch.randperm(E, generator=g)[:3] for _ in range(10)]).view(2, 5, 3)
    total = 0.0
    for b in range(2):  # eq. (17)-(20), loops
        for i in range(E):
            f = E / (3 * 5) * sum(int(i in idx[b, t].tolist()) for t in range(5))
            p = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(5)) / 5
            total += f * p
    assert float(sequence_balance_loss(scores, idx, E, 3)) == pytest.approx(total / 2, rel=1e-5)


def _expert_parallel_worker(rank, port, state, x, c, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        moe = make_moe()
        moe.load_state_dict(state)
        moe.shard_experts(rank, 2)
        out = moe(x[rank])
        (out * c[rank]).sum().backward()
        grads = {n: p.grad for n, p in moe.named_parameters() if n.startswith("experts.")}
        torch.save({"out": out.detach(), "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_expert_parallel_over_two_gloo_processes_equals_one_process(tmp_path):
    """Experts split over 2 processes (all-to-all dispatch and combine, gloo): each rank's
    outputs, and the gradients of the experts it holds (from both ranks' tokens), equal a
    single process holding every expert."""
    import multiprocessing
    import socket

    moe = make_moe()
    g = torch.Generator().manual_seed(3)
    x = [torch.randn(2, 7, H, generator=g), torch.randn(1, 9, H, generator=g)]
    c = [torch.randn(2, 7, H, generator=g), torch.randn(1, 9, H, generator=g)]
    ref = [moe(x[r]) for r in range(2)]
    sum((ref[r] * c[r]).sum() for r in range(2)).backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    state = {k: v.clone() for k, v in moe.state_dict().items()}
    procs = [
        ctx.Process(target=_expert_parallel_worker, args=(r, port, state, x, c, str(tmp_path)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["out"], ref[rank].detach(), atol=1e-5, rtol=1e-5)
        assert len(got["grads"]) == 3 * E // 2  # this rank's 4 experts × 3 projections
        for name, grad in got["grads"].items():
            expected = dict(moe.named_parameters())[name].grad
            torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)
