"""Padding-free packing: the step plan and the packed rows the model trains on.

An optimiser step is a fixed number of *examples* (the paper's global batch of 128), whatever their lengths.
Each step's examples are split across ranks balanced by tokens, then packed first-fit-decreasing into rows of at
most ``micro_batch_tokens`` tokens. A row is one sequence whose ``position_ids`` restart at every example;
transformers turns that into a block-diagonal causal mask (sdpa/flex) or the varlen path (flash-attention), so no
example attends to another and no compute is spent on padding.

Everything here is a pure function of (seed, epoch, step), which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xllama.data.tokenize import IGNORE_INDEX


@dataclass
class TokenStore:
    """All tokenised examples in one flat int32 array: fast to slice, small to keep in memory."""

    ids: np.ndarray  # all tokens, concatenated
    offsets: np.ndarray  # example i is ids[offsets[i]:offsets[i+1]]
    prompt_lengths: np.ndarray

    @classmethod
    def from_dataset(cls, dataset) -> "TokenStore":
        table = dataset.with_format("numpy")
        lengths = np.fromiter((len(x) for x in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in table["input_ids"]]) if len(lengths) else np.zeros(0, np.int32)
        return cls(ids, offsets, np.asarray(dataset["prompt_length"], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def target_counts(self) -> np.ndarray:
        """Tokens that carry loss, per example: position t predicts token t+1 when t+1 >= prompt length."""
        return self.lengths - np.maximum(self.prompt_lengths, 1)

    def example(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)


def total_steps(num_examples: int, global_batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch(num_examples, global_batch_size)))


def step_examples(step: int, num_examples: int, global_batch_size: int, seed: int) -> np.ndarray:
    """Indices of the examples in optimiser step ``step`` (0-based): a fresh seeded shuffle each epoch."""
    per_epoch = steps_per_epoch(num_examples, global_batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[k * global_batch_size : (k + 1) * global_batch_size]


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
    """One packed row: input_ids, position_ids and already-shifted labels (labels[t] is the target of t)."""
    if not indices:  # a no-loss filler micro-batch
        return {
            "input_ids": np.array([[pad_token_id]], dtype=np.int64),
            "position_ids": np.zeros((1, 1), dtype=np.int64),
            "labels": np.full((1, 1), IGNORE_INDEX, dtype=np.int64),
        }
    ids, pos, labels = [], [], []
    for i in indices:
        x = store.example(i).astype(np.int64)
        n, p = len(x), int(store.prompt_lengths[i])
        y = np.full(n, IGNORE_INDEX, dtype=np.int64)
        y[:-1] = x[1:]
        y[: max(p, 1) - 1] = IGNORE_INDEX
        ids.append(x)
        pos.append(np.arange(n, dtype=np.int64))
        labels.append(y)
    return {
        "input_ids": np.concatenate(ids)[None],
        "position_ids": np.concatenate(pos)[None],
        "labels": np.concatenate(labels)[None],
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
