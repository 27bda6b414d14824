"""The on-disk token store every rank memory-maps (nanoGPT's ``.bin`` idea): data bigger than memory.

``RUN/store/`` holds

- ``tokens.bin``: all examples' tokens back to back, ``uint16`` when the vocabulary has at most 65,536 entries,
  else ``uint32``;
- ``offsets.npy``: ``int64``, example ``i`` is ``tokens[offsets[i]:offsets[i+1]]`` (correct past 2**31 tokens);
- ``prompt_lengths.npy``: ``int32``, tokens of example ``i`` before its first target;
- ``meta.json``: dtype, counts, vocabulary size.

It is written from the tokenised set (a ``datasets`` table on disk) in batches, appending to the files, so the
memory used does not grow with the data. Opening it costs no token reads (``np.memmap``). The store is built by
one process *before* the process group exists (:func:`prepare_once`): the other processes wait for the finished
directory on the file system, not in a collective that the NCCL timeout would kill.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

FILES = ("tokens.bin", "offsets.npy", "prompt_lengths.npy", "meta.json")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def fill_offsets(offsets: np.ndarray, start: int, base: int, lengths: np.ndarray) -> int:
    """Write the end offsets of examples ``start .. start+len(lengths)-1`` into ``offsets`` (int64) after a
    running total ``base``; return the new total. 64-bit throughout, so totals past 2**31 stay exact."""
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64), dtype=np.int64)
    ends += np.int64(base)
    offsets[start + 1 : start + 1 + len(ends)] = ends
    return int(ends[-1]) if len(ends) else int(base)


def write_store(dataset, directory: Path, vocab_size: int, batch_size: int = 16384, progress: bool = True) -> dict:
    """Write the tokenised ``dataset`` (columns input_ids, prompt_length) as a store in ``directory``."""
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    for column in ("input_ids", "prompt_length"):
        if column not in dataset.column_names:
            raise XllamaError(f"tokenised set has no {column!r} column (columns: {', '.join(dataset.column_names)})")
    dtype = token_dtype(vocab_size)
    n = len(dataset)
    total = 0
    with atomic_directory(Path(directory), overwrite=True) as tmp:
        offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=np.int64, shape=(n + 1,))
        prompts = np.lib.format.open_memmap(tmp / "prompt_lengths.npy", mode="w+", dtype=np.int32, shape=(n,))
        offsets[0] = 0
        done = 0
        bar = tqdm(total=n, desc="token store", unit="ex", disable=not progress)
        with open(tmp / "tokens.bin", "wb") as f:
            for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
                ids = batch.column("input_ids").combine_chunks()
                values = ids.flatten().to_numpy(zero_copy_only=False)
                if len(values) and int(values.max()) >= vocab_size:
                    raise XllamaError(f"token id {int(values.max())} is outside the vocabulary ({vocab_size})")
                values.astype(dtype, copy=False).tofile(f)
                lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
                total = fill_offsets(offsets, done, total, lengths)
                prompts[done : done + len(lengths)] = batch.column("prompt_length").to_numpy()
                done += len(lengths)
                bar.update(len(lengths))
        bar.close()
        offsets.flush()
        prompts.flush()
        del offsets, prompts
        if "sequence_lengths" in dataset.column_names:  # grouped examples (preference pairs): small sets
            segments = [list(zip(map(int, a), map(int, b))) for a, b in
                        zip(dataset["sequence_lengths"], dataset["sequence_prompt_lengths"])]
            atomic_write_json(tmp / "segments.json", segments)
        meta = {"examples": n, "tokens": total, "dtype": dtype.name, "vocab_size": vocab_size}
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def open_store(directory: Path):
    """Memory-map a store as a :class:`~xllama.train.packing.TokenStore` (nothing is read until used)."""
    from xllama.train.packing import TokenStore

    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise XllamaError(f"token store {directory} is incomplete: {', '.join(missing)} missing; delete the "
                          "directory to rebuild it")
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    offsets = np.load(directory / "offsets.npy", mmap_mode="r")
    if len(offsets) != meta["examples"] + 1 or int(offsets[-1]) != meta["tokens"]:
        raise XllamaError(f"token store {directory}: offsets.npy does not match meta.json ({meta})")
    tokens = (np.memmap(directory / "tokens.bin", dtype=meta["dtype"], mode="r") if meta["tokens"]
              else np.zeros(0, dtype=meta["dtype"]))
    if len(tokens) != meta["tokens"]:
        raise XllamaError(f"token store {directory}: tokens.bin has {len(tokens)} tokens, meta.json says "
                          f"{meta['tokens']}")
    segments = None
    if (directory / "segments.json").is_file():
        segments = [tuple(map(tuple, seqs)) for seqs in json.loads((directory / "segments.json").read_text())]
    return TokenStore(tokens, offsets, np.load(directory / "prompt_lengths.npy", mmap_mode="r"), segments)


def prepare_once(prepare, ready: Path, rank: int, poll_s: float = 2.0, what: str = "data") -> None:
    """Rank 0 runs ``prepare()`` (which must leave ``ready`` in place, atomically, when done); the other ranks
    wait for ``ready`` on the file system. Called before the process group exists, so a long Hub download or
    tokenisation cannot hit a collective timeout. A crash on rank 0 ends the launch (torchrun/accelerate stop
    the other processes)."""
    if rank == 0:
        prepare()
        return
    waited, began = 0.0, time.monotonic()
    while not ready.exists():
        time.sleep(poll_s)
        waited = time.monotonic() - began
        if int(waited) % 60 < poll_s:
            log.info("rank %d: waiting for rank 0 to prepare the %s (%s), %.0f s", rank, what, ready, waited)
