"""`Scheduler` on its own (no model, no engine): the token budget, chunked prefill, running
sequences before waiting ones, the sequence cap, preemption by recompute when KV blocks run
out, prefix-cache reuse, and finished sequences giving their blocks back."""

from __future__ import annotations

import pytest

from lmforge.infer.cache import BlockAllocator
from lmforge.infer.scheduler import ScheduledChunk, Scheduler, Sequence

BS = 4  # tokens per block


def make(num_blocks: int = 16, max_seqs: int = 8, budget: int = 64, caching: bool = True):
    allocator = BlockAllocator(num_blocks, enable_prefix_caching=caching)
    return Scheduler(allocator, BS, max_seqs, budget), allocator


def seq(name: str, n: int, first: int = 1) -> Sequence:
    """A sequence whose prompt is ``n`` tokens ``first, first + 1, …``."""
    return Sequence(name, list(range(first, first + n)), n)


def plan(chunks: list[ScheduledChunk]) -> list[tuple[str, int]]:
    return [(c.seq.request_id, c.num_tokens) for c in chunks]


def step(scheduler: Scheduler, next_token: int = 0) -> list[tuple[str, int]]:
    """One engine iteration without a model: schedule, commit, and append a token to every
    sequence whose chunk reached its last token (as the engine's sampler does)."""
    chunks = scheduler.schedule()
    scheduler.commit(chunks)
    for c in chunks:
        if c.seq.num_computed == len(c.seq.tokens):
            c.seq.tokens.append(next_token)
    return plan(chunks)


# ---------------------------------------------------------------------- budget, chunking
def test_chunked_prefill_splits_a_long_prompt_under_the_token_budget():
    scheduler, _ = make(budget=4)
    a = seq("a", 10)
    scheduler.add(a)
    assert step(scheduler) == [("a", 4)]
    assert (a.num_computed, len(a.tokens)) == (4, 10)  # mid-prefill: nothing sampled yet
    assert step(scheduler) == [("a", 4)]
    assert step(scheduler) == [("a", 2)]  # the rest of the prompt; a token is sampled
    assert len(a.tokens) == 11
    assert step(scheduler) == [("a", 1)]  # decoding: one token per step
    assert len(a.block_ids) == 3  # 11 tokens computed, block 3 holds the 12th slot


def test_budget_is_shared_and_never_exceeded():
    scheduler, _ = make(budget=8)
    for name, n, first in (("a", 5, 10), ("b", 6, 20), ("c", 3, 30)):
        scheduler.add(seq(name, n, first))
    assert step(scheduler) == [("a", 5), ("b", 3)]  # b's prefill is cut by the budget
    assert step(scheduler) == [("a", 1), ("b", 3), ("c", 3)]  # running first, then c waits in
    for _ in range(5):
        assert sum(n for _, n in step(scheduler)) <= 8


def test_running_sequences_are_scheduled_before_waiting_ones():
    scheduler, _ = make(budget=6)
    a = seq("a", 3)
    scheduler.add(a)
    step(scheduler)
    scheduler.add(seq("b", 8, first=50))
    # a decodes first (arrival order of running sequences); b gets what is left of the budget.
    assert step(scheduler) == [("a", 1), ("b", 5)]
    assert [s.request_id for s in scheduler.running] == ["a", "b"]


def test_a_full_budget_keeps_waiting_sequences_out():
    scheduler, _ = make(budget=3)
    scheduler.add(seq("a", 9))
    step(scheduler)
    scheduler.add(seq("b", 2, first=40))
    assert step(scheduler) == [("a", 3)]  # still prefilling a: nothing left for b
    assert [s.request_id for s in scheduler.waiting] == ["b"]


def test_max_num_seqs_caps_the_running_set():
    scheduler, _ = make(max_seqs=2)
    for i, name in enumerate("abc"):
        scheduler.add(seq(name, 2, first=10 * i))
    assert step(scheduler) == [("a", 2), ("b", 2)]
    assert [s.request_id for s in scheduler.waiting] == ["c"]
    a = scheduler.running[0]
    scheduler.remove(a)  # finished: c may join
    assert step(scheduler) == [("b", 1), ("c", 2)]


# ---------------------------------------------------------------------- blocks, preemption
def test_new_blocks_are_reported_once_and_blocks_follow_the_tokens():
    scheduler, allocator = make(num_blocks=8)
    a = seq("a", 5)
    scheduler.add(a)
    scheduler.commit(scheduler.schedule())
    assert len(a.block_ids) == 2 and scheduler.new_blocks == a.block_ids
    a.tokens.append(0)
    chunks = scheduler.schedule()  # token 6 fits in block 2: no new block
    assert plan(chunks) == [("a", 1)] and scheduler.new_blocks == []
    assert allocator.num_free == 6


def test_preemption_by_recompute_when_blocks_run_out():
    scheduler, allocator = make(num_blocks=4, max_seqs=2)
    a, b, c = seq("a", 4), seq("b", 4, first=20), seq("c", 1, first=40)
    for s in (a, b, c):
        scheduler.add(s)  # c waits: at most 2 sequences run
    assert step(scheduler) == [("a", 4), ("b", 4)]  # one full block each, token sampled
    assert step(scheduler) == [("a", 1), ("b", 1)]  # each needs and gets a second block
    assert allocator.num_free == 0
    for _ in range(3):  # fill both second blocks (8 tokens computed each)
        step(scheduler)
    assert (a.num_computed, b.num_computed, len(a.tokens)) == (8, 8, 9)
    # a needs a third block and none is free: b, the most recently admitted, is preempted.
    assert plan(scheduler.schedule()) == [("a", 1)]
    assert scheduler.num_preemptions == 1
    assert scheduler.running == [a] and list(scheduler.waiting) == [b, c]  # b goes first
    assert (b.block_ids, b.num_computed, b.num_registered) == ([], 0, 0)
    assert len(b.tokens) == 9  # its generated tokens are kept, to be recomputed


def test_no_waiting_sequence_joins_in_a_step_that_preempted():
    scheduler, allocator = make(num_blocks=3, budget=4, caching=False)
    a, b = seq("a", 4), seq("b", 4, first=20)
    scheduler.add(a)
    scheduler.add(b)
    assert step(scheduler) == [("a", 4)]
    assert step(scheduler) == [("a", 1), ("b", 3)]
    assert step(scheduler) == [("a", 1), ("b", 1)]  # b's prompt done: 5 tokens, 1 block
    # b needs a 2nd block, none is free: b preempts itself. A 3-token chunk of its
    # recompute would fit the freed block and the budget left, but not in this step.
    assert step(scheduler) == [("a", 1)]
    assert scheduler.num_preemptions == 1 and list(scheduler.waiting) == [b]
    assert allocator.num_free == 1
    assert step(scheduler) == [("a", 1), ("b", 3)]  # the next step re-admits it


def test_a_sequence_that_cannot_grow_preempts_itself():
    scheduler, allocator = make(num_blocks=2)
    a = seq("a", 8)
    scheduler.add(a)
    step(scheduler)  # both blocks, 8 tokens computed, a 9th token sampled
    assert plan(scheduler.schedule()) == []
    assert scheduler.num_preemptions == 1 and list(scheduler.waiting) == [a]
    assert allocator.num_free == 2


def test_preempted_sequence_is_recomputed_in_full_when_room_returns():
    scheduler, allocator = make(num_blocks=4, caching=False)
    a, b = seq("a", 4), seq("b", 4, first=20)
    scheduler.add(a)
    scheduler.add(b)
    for _ in range(5):
        step(scheduler)
    scheduler.schedule()  # b is preempted here (see the test above)
    assert list(scheduler.waiting) == [b]
    scheduler.remove(a)  # a finishes; its blocks are free again
    assert allocator.num_free == 4
    assert plan(scheduler.schedule()) == [("b", 9)]  # prompt + its 5 generated tokens
    assert b.num_computed == 0 and len(b.block_ids) == 3


def test_waiting_head_without_room_blocks_the_queue_and_keeps_no_blocks():
    scheduler, allocator = make(num_blocks=4)
    a = seq("a", 8)
    scheduler.add(a)
    step(scheduler)  # a: 2 full blocks, entered in the prefix cache
    big = Sequence("big", a.tokens[:4] + list(range(30, 42)), 16)  # shares a's first block
    small = seq("small", 1, first=70)
    scheduler.add(big)
    scheduler.add(small)
    # a takes a 3rd block; big needs 3 more than its cached one, 1 is left; small would fit
    # but waits its turn, and big gives the cached block back while it waits.
    assert step(scheduler) == [("a", 1)]
    assert [s.request_id for s in scheduler.waiting] == ["big", "small"]
    assert (big.block_ids, big.num_computed) == ([], 0) and allocator.num_free == 1
    assert allocator.ref_counts[a.block_ids[0]] == 1


# ---------------------------------------------------------------------- finishing, prefixes
def test_removing_finished_or_waiting_sequences_frees_every_block():
    scheduler, allocator = make(num_blocks=8)
    a, b = seq("a", 6), seq("b", 3, first=30)
    scheduler.add(a)
    step(scheduler)
    scheduler.add(b)
    assert allocator.num_free == 6
    scheduler.remove(a)  # finished while running
    scheduler.remove(b)  # aborted while waiting
    assert allocator.num_free == 8 and not scheduler.has_unfinished()
    assert a.block_ids == [] and a.num_computed == 0


def test_full_blocks_are_reused_by_a_later_prompt_with_the_same_prefix():
    scheduler, allocator = make(num_blocks=8)
    a = seq("a", 9)
    scheduler.add(a)
    step(scheduler)  # blocks 0 and 1 are full and registered in the prefix cache
    assert a.num_registered == 2
    b = Sequence("b", a.tokens[:8] + [99, 98], 10)
    scheduler.add(b)
    assert step(scheduler) == [("a", 1), ("b", 2)]  # b computes only its own tail
    assert b.block_ids[:2] == a.block_ids[:2]
    assert scheduler.prefix_hit_tokens == 8 and scheduler.prompt_tokens == 9 + 10
    same = Sequence("c", a.tokens[:8], 8)  # wholly cached: the last token is still computed
    scheduler.add(same)
    assert step(scheduler)[-1] == ("c", 4)
    assert allocator.ref_counts[a.block_ids[0]] == 3


def test_copies_of_a_prompt_arriving_together_compute_its_prefix_once():
    """n samples of one prompt (a GRPO group): the first copy prefills; the others wait one
    step for its full blocks to enter the cache, then compute only the last token."""
    scheduler, allocator = make(num_blocks=16)
    copies = [seq(f"c{i}", 9) for i in range(3)]
    other = seq("o", 5, first=50)  # behind them in the queue: waits with them (FIFO)
    for s in (*copies, other):
        scheduler.add(s)
    assert step(scheduler) == [("c0", 9)]
    assert step(scheduler) == [("c0", 1), ("c1", 1), ("c2", 1), ("o", 5)]
    assert copies[1].block_ids[:2] == copies[2].block_ids[:2] == copies[0].block_ids[:2]
    assert scheduler.prefix_hit_tokens == 16
    plain, _ = make(num_blocks=16, caching=False)  # no cache: nothing to wait for
    for s in (seq("a", 9), seq("b", 9)):
        plain.add(s)
    assert step(plain) == [("a", 9), ("b", 9)]


def test_a_copy_waits_through_a_chunked_prefill():
    scheduler, _ = make(num_blocks=16, budget=6)
    a, b = seq("a", 13), seq("b", 13)
    scheduler.add(a)
    scheduler.add(b)
    assert step(scheduler) == [("a", 6)]  # b's first block is being computed by a
    assert step(scheduler) == [("a", 6)]  # a's blocks 0 and 1 are cached; b needs block 2
    assert step(scheduler) == [("a", 1), ("b", 1)]
    assert b.num_computed == 13 and scheduler.prefix_hit_tokens == 12


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="max_num_seqs=0"):
        Scheduler(BlockAllocator(4), BS, 0, 16)
    with pytest.raises(ValueError, match="max_num_batched_tokens=0"):
        Scheduler(BlockAllocator(4), BS, 4, 0)
