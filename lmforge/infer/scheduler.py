"""Continuous batching (Orca, Yu et al. 2022, "Orca: A Distributed Serving System for
Transformer-Based Generative Models"): every engine step re-forms the batch at the
granularity of single iterations, so finished requests leave and new ones join at once.

One `Scheduler.schedule` call picks, under a token budget (``max_num_batched_tokens``) and a
sequence cap (``max_num_seqs``), how many new tokens of each sequence to run:

1. running sequences first, in arrival order: one token each when decoding, or the next
   chunk of a prompt whose prefill was split (chunked prefill, Agrawal et al. 2023,
   "SARATHI"); if the KV-cache blocks they need are not free, the most recently admitted
   running sequence is *preempted by recompute* — its blocks are released and it goes back
   to the head of the waiting queue, to be prefilled again (prompt + tokens generated so
   far) when there is room;
2. then waiting sequences (unless something was preempted this step), reusing cached
   prefix blocks first (see `lmforge.infer.cache.BlockAllocator`). A waiting sequence whose
   next uncached block is one a running prompt is computing right now (``n`` samples of one
   prompt, a GRPO group, G copies of an agent's screenshot context) waits until that block
   is in the cache — its prefix is then computed once, not once per copy.

The `Sequence` here is what scheduling needs; the engine keeps its sampling state beside.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lmforge.infer.cache import BlockAllocator, BlockKey, block_key


@dataclass(eq=False)
class Sequence:
    """``tokens`` = prompt + generated; the first ``num_computed`` have K/V in the cache."""

    request_id: str
    tokens: list[int]
    num_prompt: int
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_registered: int = 0  # leading full blocks already entered in the prefix cache
    keys: list[BlockKey] = field(default_factory=list)  # prefix-cache keys of full blocks
    hashes: list[int] = field(default_factory=list)
    adapter: int = 0  # LoRA adapter (0: the base model); its K/V differ, so do its keys
    # (start, end, content hash) of each image in the prompt (`lmforge.infer.multimodal`):
    # placeholder ids are equal for all images, so a block's key names the images it holds.
    image_spans: tuple[tuple[int, int, str], ...] = ()

    def block_keys(self, count: int, block_size: int) -> list[BlockKey]:
        """Keys of the first ``count`` full blocks (computed once, chained by parent hash;
        the first block's parent is the adapter, so adapters never share cached K/V; a
        block overlapping an image carries the image's content hash)."""
        while len(self.keys) < count:
            i = len(self.keys)
            root = None if self.adapter == 0 else hash(("lora-adapter", self.adapter))
            parent = self.hashes[-1] if self.hashes else root
            lo, hi = i * block_size, (i + 1) * block_size
            images = tuple(d for s, e, d in self.image_spans if s < hi and e > lo)
            key = block_key(parent, self.tokens[lo:hi], images)
            self.keys.append(key)
            self.hashes.append(hash(key))
        return self.keys[:count]


@dataclass
class ScheduledChunk:
    """Run ``num_tokens`` tokens of ``seq`` starting at ``seq.num_computed``."""

    seq: Sequence
    num_tokens: int


class Scheduler:
    """Chooses each step's chunks and owns the sequences' KV blocks (see module docstring)."""

    def __init__(
        self,
        allocator: BlockAllocator,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_seqs={max_num_seqs} and max_num_batched_tokens="
                f"{max_num_batched_tokens} must both be ≥ 1"
            )
        self.allocator = allocator
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.new_blocks: list[int] = []
        self.num_preemptions = 0
        self.prefix_hit_tokens = 0
        self.prompt_tokens = 0
        # copies of a prompt wait for its first copy's blocks (bench/shared_prefill.py: False)
        self.share_prefill = True

    # ------------------------------------------------------------------ queue
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Forget ``seq`` (finished or aborted) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _release(self, seq: Sequence) -> None:
        self.allocator.free(seq.block_ids)
        seq.block_ids = []
        seq.num_computed = 0
        seq.num_registered = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        total = seq.num_computed + num_tokens
        return -(-total // self.block_size) - len(seq.block_ids)

    def _grow(self, seq: Sequence, count: int) -> None:
        new = [self.allocator.allocate() for _ in range(count)]
        seq.block_ids.extend(new)
        self.new_blocks.extend(new)

    # ------------------------------------------------------------------ schedule
    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        self.new_blocks = []  # allocated this step (the engine clears them before use)
        chunks: list[ScheduledChunk] = []
        preempted = False
        for seq in list(self.running):
            if budget == 0:
                break
            if preempted and seq not in self.running:  # preempted by an earlier sequence
                continue
            n = min(len(seq.tokens) - seq.num_computed, budget)
            need = self._blocks_needed(seq, n)
            if need:
                while self.allocator.num_free < need:
                    victim = self.running[-1]
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                if preempted and seq not in self.running:
                    continue
                self._grow(seq, need)
            chunks.append(ScheduledChunk(seq, n))
            budget -= n
        share = self.share_prefill and self.waiting  # per step: only when someone waits
        computing = self._prefilling_keys() if share else set()
        while self.waiting and budget > 0 and not preempted:
            if len(self.running) >= self.max_num_seqs:
                break
            seq = self.waiting[0]
            self._reuse_prefix(seq)
            if computing and self._next_key(seq) in computing:  # being computed: wait for it
                self._release(seq)
                break
            n = min(len(seq.tokens) - seq.num_computed, budget)
            need = self._blocks_needed(seq, n)
            if self.allocator.num_free < need:
                self._release(seq)
                break
            self.waiting.popleft()
            self.prefix_hit_tokens += seq.num_computed
            self.prompt_tokens += len(seq.tokens)
            self._grow(seq, need)
            self.running.append(seq)
            if self.share_prefill:
                computing |= self._unregistered_prompt_keys(seq)
            chunks.append(ScheduledChunk(seq, n))
            budget -= n
        return chunks

    def _unregistered_prompt_keys(self, seq: Sequence) -> set[BlockKey]:
        """Keys of ``seq``'s full prompt blocks not yet in the prefix cache (none without
        prefix caching: nothing is shared, so nothing is worth waiting for)."""
        if not self.allocator.enable_prefix_caching:
            return set()
        full = seq.num_prompt // self.block_size
        return set(seq.block_keys(full, self.block_size)[seq.num_registered :])

    def _prefilling_keys(self) -> set[BlockKey]:
        """The full prompt blocks running sequences are still prefilling."""
        keys: set[BlockKey] = set()
        if not self.allocator.enable_prefix_caching:
            return keys
        for seq in self.running:
            if seq.num_computed < seq.num_prompt:
                keys |= self._unregistered_prompt_keys(seq)
        return keys

    def _next_key(self, seq: Sequence) -> BlockKey | None:
        """The key of the first block ``seq`` would compute, if prefix caching could reuse
        it (a full block that leaves at least one token to compute), else None."""
        i = len(seq.block_ids)
        if i >= (len(seq.tokens) - 1) // self.block_size:
            return None
        return seq.block_keys(i + 1, self.block_size)[i]

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Point ``seq``'s first blocks at cached ones with the same prefix. At least one
        token is always left to compute, since its logits pick the next token."""
        bs = self.block_size
        max_hits = (len(seq.tokens) - 1) // bs
        for key in seq.block_keys(max_hits, bs):
            block = self.allocator.lookup(key)
            if block is None:
                break
            seq.block_ids.append(block)
        seq.num_computed = len(seq.block_ids) * bs
        seq.num_registered = len(seq.block_ids)

    def commit(self, chunks: list[ScheduledChunk]) -> None:
        """After the forward: the chunks' K/V are written; enter newly full blocks into the
        prefix cache."""
        bs = self.block_size
        for chunk in chunks:
            seq = chunk.seq
            seq.num_computed += chunk.num_tokens
            full = seq.num_computed // bs
            if full > seq.num_registered:
                keys = seq.block_keys(full, bs)
                for i in range(seq.num_registered, full):
                    self.allocator.register(seq.block_ids[i], keys[i])
                seq.num_registered = full
