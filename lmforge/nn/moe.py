"""DeepSeekMoE (DeepSeek-V3, arXiv:2412.19437 §2.1.2): fine-grained routed experts plus
shared experts, sigmoid gating, group-limited top-k routing and auxiliary-loss-free balancing.

For a token u, eq. (12)-(16):

    h' = u + Σ_shared FFN_i(u) + Σ_routed g_i FFN_i(u)
    s_i = sigmoid(u · e_i)                                        (affinity)
    selected = TopK(s_i + b_i, K)   within the topk_group best of n_group groups
    g_i = s_i / Σ_selected s_j · routed_scaling_factor            (norm_topk_prob)

The per-expert bias b = ``e_score_correction_bias`` (fp32, saved in checkpoints) changes only
*which* experts are chosen, never the gate values (§2.1.2, "auxiliary-loss-free load
balancing"); it is updated outside the forward, from ``expert_load`` (the training loop's
γ·sign(mean load − load_i) step). Groups are scored by the sum of their two highest biased
affinities (as DeepSeek-V3's and transformers' ``noaux_tc`` routing). No token is dropped.

Experts run grouped: the (token, expert) pairs are sorted by expert and each expert that
received tokens runs once on its slice — never every expert on every token.

The complementary sequence-wise balance loss, eq. (17)-(20), is computed in training when
``aux_loss_alpha`` > 0 and left in ``aux_loss`` for the model to add to its loss.

Expert parallelism (`DeepSeekMoE.shard_experts`): each of W processes keeps E/W experts; the
(token, expert) pairs are sent to the process owning the expert with one all-to-all
(``torch.distributed``, autograd-aware, gloo or NCCL), computed there grouped by expert, and
sent back with a second all-to-all (dispatch / combine, DeepSeek-V3 §3.2.2).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_to_all_single

from lmforge.nn.mlp import SwiGLU


def route(
    scores: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
) -> torch.Tensor:
    """Indices ``[N, top_k]`` of the experts each token uses: the top-k of ``scores + bias``
    among the experts of its ``topk_group`` best groups (a group's score: the sum of its
    two highest biased affinities). ``scores`` ``[N, E]`` (sigmoid affinities)."""
    choice = scores + bias
    if topk_group < n_group:
        n, e = choice.shape
        grouped = choice.view(n, n_group, e // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, n_group]
        keep = group_scores.topk(topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(n, e)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    return choice.topk(top_k, dim=-1).indices


def gate_weights(
    scores: torch.Tensor, indices: torch.Tensor, normalize: bool, scaling: float
) -> torch.Tensor:
    """g for the chosen experts, eq. (13): s_i (÷ their sum when ``normalize``) × scaling."""
    weights = scores.gather(1, indices)
    if normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling


def sequence_balance_loss(
    scores: torch.Tensor, indices: torch.Tensor, num_experts: int, top_k: int
) -> torch.Tensor:
    """Sequence-wise balance loss Σ_i f_i P_i, eq. (17)-(20), averaged over sequences.

    ``scores`` ``[B, T, E]`` sigmoid affinities, ``indices`` ``[B, T, K]`` chosen experts;
    f_i = E/(K·T) · #{t: i chosen at t}, P_i = mean_t s_i,t / Σ_j s_j,t. Equals 1 when
    the load is uniform (α scales it)."""
    b, t, _ = scores.shape
    chosen = torch.zeros(b, num_experts, device=scores.device, dtype=scores.dtype)
    chosen.scatter_add_(
        1, indices.reshape(b, -1), torch.ones_like(indices.reshape(b, -1), dtype=scores.dtype)
    )
    f = chosen * (num_experts / (top_k * t))
    p = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)
    return (f * p).sum(dim=-1).mean()


class TopKRouter(nn.Module):
    """The gate: expert centroids ``weight`` ``[E, H]`` (kept fp32, as the affinities and the
    routing decision are precision-sensitive) and the selection-only correction bias."""

    def __init__(self, hidden_size: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))

    def _apply(self, fn, recurse: bool = True):
        # `model.to(bfloat16)` must not round the gate or the bias (DeepSeek keeps them fp32):
        # apply `fn` (device moves), then put the exact fp32 values back on the new device.
        weight, bias = self.weight.data, self.e_score_correction_bias
        super()._apply(fn, recurse)
        if weight.is_meta or self.weight.is_meta:  # nothing exact to keep (built to be loaded)
            weight, bias = self.weight.data, self.e_score_correction_bias
        device = self.weight.device
        self.weight.data = weight.to(device, torch.float32)
        self.e_score_correction_bias = bias.to(device, torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid affinities ``[N, E]`` (fp32) of tokens ``x`` ``[N, H]``."""
        return F.linear(x.float(), self.weight.float()).sigmoid()


class DeepSeekMoE(nn.Module):
    """Routed + shared SwiGLU experts (see module docstring). Parameter names are
    transformers' checkpoint names: ``gate.weight``, ``gate.e_score_correction_bias``,
    ``experts.{i}.{gate,up,down}_proj.weight``, ``shared_experts.*``.

    ``expert_load`` ``[E]`` counts the tokens routed to each expert by training-mode
    forwards since the last `reset_load` (not saved; this process's tokens only — sum it over
    data-parallel ranks for the global load); ``aux_loss`` is the last training
    forward's α-weighted sequence-wise balance loss (None when α = 0 or not training).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        n_routed_experts: int,
        num_experts_per_tok: int,
        n_shared_experts: int = 0,
        n_group: int = 1,
        topk_group: int = 1,
        norm_topk_prob: bool = True,
        routed_scaling_factor: float = 1.0,
        aux_loss_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_experts, self.top_k = n_routed_experts, num_experts_per_tok
        self.n_group, self.topk_group = n_group, topk_group
        self.norm_topk_prob, self.routed_scaling_factor = norm_topk_prob, routed_scaling_factor
        self.aux_loss_alpha = aux_loss_alpha
        self.gate = TopKRouter(hidden_size, n_routed_experts)
        self.experts = nn.ModuleList(
            SwiGLU(hidden_size, intermediate_size) for _ in range(n_routed_experts)
        )
        self.shared_experts = (
            SwiGLU(hidden_size, intermediate_size * n_shared_experts) if n_shared_experts else None
        )
        self.register_buffer("expert_load", torch.zeros(n_routed_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.expert_group: tuple | None = None  # (rank, world_size, process group) when sharded

    def shard_experts(self, rank: int, world_size: int, group=None) -> None:
        """Expert parallelism: keep only experts ``[rank·E/W, (rank+1)·E/W)`` (the others
        become parameter-free placeholders, so the state dict holds this rank's experts under
        their global names); the forward then dispatches tokens with all-to-all."""
        if self.num_experts % world_size:
            raise ValueError(
                f"n_routed_experts={self.num_experts} is not divisible by {world_size}"
            )
        per = self.num_experts // world_size
        for e in range(self.num_experts):
            if not rank * per <= e < (rank + 1) * per:
                self.experts[e] = nn.Identity()
        self.expert_group = (rank, world_size, group)

    def reset_load(self) -> None:
        """Zero `expert_load` (after the balancing step has read it)."""
        self.expert_load.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        scores = self.gate(flat)
        bias = self.gate.e_score_correction_bias.detach().float()
        with torch.no_grad():
            indices = route(scores.detach(), bias, self.top_k, self.n_group, self.topk_group)
        weights = gate_weights(scores, indices, self.norm_topk_prob, self.routed_scaling_factor)
        self.aux_loss = None
        # count each forward once: not again when activation checkpointing recomputes this
        # block inside the backward pass (an autograd graph task is then running)
        if self.training and torch._C._current_graph_task_id() == -1:
            with torch.no_grad():
                counts = torch.bincount(indices.flatten(), minlength=self.num_experts)
                self.expert_load += counts.to(self.expert_load.dtype)
        if self.training and self.aux_loss_alpha > 0 and x.ndim == 3:
            loss = sequence_balance_loss(
                scores.view(*shape[:2], -1),
                indices.view(*shape[:2], -1),
                self.num_experts,
                self.top_k,
            )
            self.aux_loss = self.aux_loss_alpha * loss
        routed = self.routed if self.expert_group is None else self.routed_parallel
        out = routed(flat, indices, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)

    def routed(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_k g_k FFN_{i_k}(x) for tokens ``x`` ``[N, H]``: pairs sorted by expert, each
        expert run once on its contiguous slice of tokens."""
        k = indices.shape[1]
        flat_experts = indices.flatten()
        order = flat_experts.argsort(stable=True)
        tokens = order // k  # token of each sorted (token, expert) pair
        counts = torch.bincount(flat_experts, minlength=self.num_experts).tolist()
        pair_weights = weights.flatten()[order]
        out = torch.zeros_like(x)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = tokens[start : start + count]
            y = self.experts[expert](x[rows]) * pair_weights[start : start + count, None]
            out.index_add_(0, rows, y.to(out.dtype))
            start += count
        return out

    def routed_parallel(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """`routed` with the experts sharded over processes (see `shard_experts`): dispatch
        each (token, expert) pair to the expert's owner, compute, combine."""
        rank, world, group = self.expert_group
        per = self.num_experts // world
        k = indices.shape[1]
        flat_experts = indices.flatten()
        order = flat_experts.argsort(stable=True)  # pairs grouped by expert, hence by owner
        tokens = order // k
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        recv_counts = torch.empty_like(counts)  # [source rank × local expert]
        dist.all_to_all_single(recv_counts, counts, group=group)
        send_split = counts.view(world, per).sum(1).tolist()
        recv_split = recv_counts.view(world, per).sum(1).tolist()
        received = all_to_all_single(
            x.new_empty(sum(recv_split), x.shape[1]), x[tokens], recv_split, send_split, group
        )
        # received: per source rank, its pairs for local expert 0, then 1, …
        local = recv_counts.view(world, per).tolist()
        starts = torch.tensor([0, *recv_split], device=x.device).cumsum(0).tolist()
        results = torch.zeros_like(received)
        for j in range(per):
            rows = []
            for source in range(world):
                begin = starts[source] + sum(local[source][:j])
                rows.append(torch.arange(begin, begin + local[source][j], device=x.device))
            rows = torch.cat(rows)
            if rows.numel():
                y = self.experts[rank * per + j](received[rows])
                results = results.index_copy(0, rows, y.to(results.dtype))
        back = all_to_all_single(
            x.new_empty(len(tokens), x.shape[1]), results, send_split, recv_split, group
        )
        pair_weights = weights.flatten()[order]
        return torch.zeros_like(x).index_add(0, tokens, (back * pair_weights[:, None]).to(x.dtype))
