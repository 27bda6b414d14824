"""Padding-free packing: the step plan and the packed rows the model trains on.

An optimiser step is a fixed number of *examples* (the paper's global batch of 128), whatever their lengths.
Each step's examples are split across ranks balanced by tokens, then packed first-fit-decreasing into rows of at
most ``micro_batch_tokens`` tokens. A row is one sequence whose ``position_ids`` restart at every example;
its sequence lengths go to xllama.train.attention, which passes the boundaries to the model explicitly (a
document-causal mask, or the flash-attention varlen path), so no example attends to another and no compute is
spent on padding.

Everything here is a pure function of (seed, epoch, step), which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from xllama.data.tokenize import IGNORE_INDEX


@dataclass
class TokenStore:
    """All tokenised examples in one flat token array (in memory, or memory-mapped from the on-disk store of
    :mod:`xllama.train.store`), int64 offsets; per-example lengths and target counts are computed once."""

    ids: np.ndarray  # all tokens, concatenated
    offsets: np.ndarray  # example i is ids[offsets[i]:offsets[i+1]]
    prompt_lengths: np.ndarray
    # Examples made of several sequences packed as one unit (a preference pair: prompt + preferred, prompt +
    # dis-preferred): per example, ((length, prompt_length), ...) of its sequences in order; None: one each.
    # segments.json in the on-disk store (StoreWriter.add's ``segments``).
    segments: list | None = None

    @classmethod
    def from_dataset(cls, dataset) -> "TokenStore":
        """A small tokenised ``datasets`` set in memory (columns input_ids, prompt_length; optionally
        sequence_lengths, sequence_prompt_lengths): the ALMA validation set. Training data is never held this
        way: tasks write it into the on-disk store (:class:`xllama.train.store.StoreWriter`)."""
        table = dataset.with_format("numpy")
        lengths = np.fromiter((len(x) for x in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in table["input_ids"]]) if len(lengths) else np.zeros(0, np.int32)
        segments = None
        if "sequence_lengths" in dataset.column_names:
            segments = [tuple(zip(map(int, n), map(int, p))) for n, p in
                        zip(dataset["sequence_lengths"], dataset["sequence_prompt_lengths"])]
        return cls(ids, offsets, np.asarray(dataset["prompt_length"], dtype=np.int64), segments)

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @functools.cached_property
    def target_counts(self) -> np.ndarray:
        """Tokens that carry loss, per example: position t predicts token t+1 when t+1 >= prompt length."""
        if self.segments is not None:
            return np.array([sum(n - max(p, 1) for n, p in seqs) for seqs in self.segments], dtype=np.int64)
        return self.lengths - np.maximum(self.prompt_lengths, 1)

    def example(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def sequences(self, i: int) -> list[tuple[np.ndarray, int]]:
        """The sequences of example ``i`` as (token ids, prompt length): one, or several for a grouped example."""
        x = self.example(i)
        if self.segments is None:
            return [(x, int(self.prompt_lengths[i]))]
        out, start = [], 0
        for n, p in self.segments[i]:
            out.append((x[start : start + n], p))
            start += n
        if start != len(x):
            raise ValueError(f"example {i}: its sequence lengths add up to {start}, not its {len(x)} tokens")
        return out


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)


def total_steps(num_examples: int, global_batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch(num_examples, global_batch_size)))


def step_examples(step: int, num_examples: int, global_batch_size: int, seed: int) -> np.ndarray:
    """Indices of the examples in optimiser step ``step`` (0-based): a fresh seeded shuffle each epoch, made
    once per epoch (cached), so a step costs O(global batch), not O(examples)."""
    per_epoch = steps_per_epoch(num_examples, global_batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch_order(seed, epoch, num_examples)[k * global_batch_size : (k + 1) * global_batch_size]


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The epoch's permutation of all examples (read-only; int32 when it fits, to halve its memory)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    if num_examples < 2**31:
        order = order.astype(np.int32)
    order.flags.writeable = False
    return order


def split_across_ranks(indices: np.ndarray, lengths: np.ndarray, world_size: int) -> list[list[int]]:
    """Longest-first onto the least-loaded rank, so every rank gets about the same number of tokens."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    load = np.zeros(world_size, dtype=np.int64)
    for i in sorted(indices.tolist(), key=lambda i: (-lengths[i], i)):
        r = int(np.argmin(load))
        shares[r].append(i)
        load[r] += lengths[i]
    return shares


def pack(indices: list[int], lengths: np.ndarray, budget: int) -> list[list[int]]:
    """First-fit decreasing: bins of at most ``budget`` tokens (each example must fit on its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def plan_step(step: int, store: TokenStore, global_batch_size: int, micro_batch_tokens: int, world_size: int,
              seed: int) -> list[list[list[int]]]:
    """For each rank, its micro-batches (lists of example indices) in step ``step``.

    Every rank computes the same plan; ranks with fewer micro-batches get empty ones (a no-loss forward pass)
    so that all ranks run the same number of forward/backward passes, as sharded training requires.
    """
    lengths = store.lengths
    indices = step_examples(step, len(store), global_batch_size, seed)
    per_rank = [pack(share, lengths, micro_batch_tokens) for share in split_across_ranks(indices, lengths, world_size)]
    most = max(len(m) for m in per_rank)
    return [m + [[] for _ in range(most - len(m))] for m in per_rank]


def packed_row(store: TokenStore, indices: list[int], pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """One packed row: input_ids, position_ids, already-shifted labels (labels[t] is the target of t) and
    sequence_ids (the number of the sequence each token belongs to, 0, 1, ... in row order; a grouped example
    contributes its sequences consecutively, so per-sequence sums need no other bookkeeping), and seq_lengths, the
    sequences' lengths in row order: the attention boundaries (xllama.train.attention passes them to the model)."""
    if not indices:  # a no-loss filler micro-batch
        return {
            "input_ids": np.array([[pad_token_id]], dtype=np.int64),
            "position_ids": np.zeros((1, 1), dtype=np.int64),
            "labels": np.full((1, 1), IGNORE_INDEX, dtype=np.int64),
            "sequence_ids": np.zeros((1, 1), dtype=np.int64),
            "seq_lengths": np.ones(1, dtype=np.int64),
        }
    ids, pos, labels, seq = [], [], [], []
    for i in indices:
        for x, p in store.sequences(i):
            x = x.astype(np.int64)
            n = len(x)
            y = np.full(n, IGNORE_INDEX, dtype=np.int64)
            y[:-1] = x[1:]
            y[: max(p, 1) - 1] = IGNORE_INDEX
            ids.append(x)
            pos.append(np.arange(n, dtype=np.int64))
            labels.append(y)
            seq.append(np.full(n, len(seq), dtype=np.int64))
    return {
        "input_ids": np.concatenate(ids)[None],
        "position_ids": np.concatenate(pos)[None],
        "labels": np.concatenate(labels)[None],
        "sequence_ids": np.concatenate(seq)[None],
        "seq_lengths": np.array([len(x) for x in ids], dtype=np.int64),
    }


def padded_batch(store: TokenStore, indices: list[int], pad_token_id: int) -> dict[str, np.ndarray]:
    """The conventional right-padded batch of the same examples (for tests and the reference benchmark)."""
    rows = [packed_row(store, [i]) for i in indices]
    width = max(r["input_ids"].shape[1] for r in rows)
    out = {
        "input_ids": np.full((len(rows), width), pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
        "labels": np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64),
    }
    for b, r in enumerate(rows):
        n = r["input_ids"].shape[1]
        out["input_ids"][b, :n] = r["input_ids"][0]
        out["attention_mask"][b, :n] = 1
        out["labels"][b, :n] = r["labels"][0]
    return out
