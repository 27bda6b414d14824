"""The on-disk token store every rank memory-maps (nanoGPT's ``.bin`` idea): data bigger than memory.

``RUN/store/`` holds

- ``tokens.bin``: all examples' tokens back to back, ``uint16`` when the vocabulary has at most 65,536 entries,
  else ``uint32``;
- ``offsets.npy``: ``int64``, example ``i`` is ``tokens[offsets[i]:offsets[i+1]]`` (correct past 2**31 tokens);
- ``prompt_lengths.npy``: ``int32``, tokens of example ``i`` before its first target;
- ``meta.json``: dtype, counts, vocabulary size.

Tasks tokenise straight into it (:class:`StoreWriter`), batch by batch, appending to the files, so the memory used
does not grow with the data and the tokens are on disk once. Opening it costs no token reads (``np.memmap``). The store is built by
one process *before* the process group exists (:func:`prepare_once`): the other processes wait for the finished
directory on the file system, not in a collective that the NCCL timeout would kill.
"""

from __future__ import annotations

import itertools
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


class StoreWriter:
    """Append tokenised examples to a new store in bounded memory (each batch goes straight to disk).

    Used as a context manager: the directory appears whole when the block ends without error, and not at all
    otherwise (:func:`xllama.io.atomic_directory`). The number of examples need not be known in advance: lengths
    are appended to a scratch file and turned into int64 offsets at the end, in chunks. ``stats`` (set by the
    caller) is written as ``stats.json``.

        with StoreWriter(run.store, len(tokenizer)) as writer:
            writer.add(input_ids, prompt_lengths)          # lists of token ids, or a 2-D array of equal rows
            writer.stats = {...}
    """

    def __init__(self, directory: Path, vocab_size: int, progress: bool = True, desc: str = "token store"):
        self.directory, self.vocab_size = Path(directory), int(vocab_size)
        self.dtype = token_dtype(self.vocab_size)
        self.examples = self.tokens = 0
        self.segments: list | None = None
        self.stats: dict | None = None
        self.meta: dict | None = None
        self._progress, self._desc = progress, desc

    def __enter__(self) -> "StoreWriter":
        from tqdm.auto import tqdm

        self._atomic = atomic_directory(self.directory, overwrite=True)
        self.tmp = self._atomic.__enter__()
        self._tokens = open(self.tmp / "tokens.bin", "wb")
        self._lengths = open(self.tmp / "lengths.tmp", "wb")
        self._prompts = open(self.tmp / "prompt_lengths.tmp", "wb")
        self._bar = tqdm(desc=self._desc, unit="ex", disable=not self._progress)
        return self

    def add(self, input_ids, prompt_lengths, segments=None) -> None:
        """Append examples: ``input_ids`` a list of token-id lists (or a 2-D array, one example per row),
        ``prompt_lengths`` the tokens of each before its first target; ``segments`` (grouped examples only, e.g.
        a preference pair) per example ((length, prompt_length), ...) of its sequences."""
        if isinstance(input_ids, np.ndarray) and input_ids.ndim == 2:
            lengths = np.full(len(input_ids), input_ids.shape[1], dtype=np.int64)
            flat = input_ids.reshape(-1)
        else:
            lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
            flat = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int64, count=int(lengths.sum()))
        self.add_flat(flat, lengths, prompt_lengths, segments)

    def add_flat(self, tokens: np.ndarray, lengths: np.ndarray, prompt_lengths, segments=None) -> None:
        """Append examples given as one flat token array and their lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        prompts = np.asarray(prompt_lengths, dtype=np.int32)
        if len(prompts) != len(lengths) or int(lengths.sum()) != len(tokens):
            raise XllamaError(f"token store: {len(lengths)} lengths summing to {int(lengths.sum())}, "
                              f"{len(prompts)} prompt lengths and {len(tokens)} tokens do not match")
        if len(tokens) and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= self.vocab_size else int(tokens.min())
            raise XllamaError(f"token id {bad} is outside the vocabulary ({self.vocab_size})")
        if segments is not None or self.segments is not None:
            if segments is None or len(segments) != len(lengths) or (self.segments is None and self.examples):
                raise XllamaError("token store: segments must be given for every example or for none")
            batch = [[(int(n), int(p)) for n, p in seqs] for seqs in segments]
            for k, (seqs, length) in enumerate(zip(batch, lengths.tolist())):
                if sum(n for n, _ in seqs) != length or any(not 0 <= p <= n for n, p in seqs):
                    raise XllamaError(f"token store: example {self.examples + k} has {length} tokens but segments "
                                      f"{seqs} ((length, prompt length) per sequence)")
            if self.segments is None:
                self.segments = []
            self.segments.extend(batch)  # in place: no copy of the list per batch
        np.asarray(tokens).astype(self.dtype, copy=False).tofile(self._tokens)
        lengths.tofile(self._lengths)
        prompts.tofile(self._prompts)
        self.examples += len(lengths)
        self.tokens += int(lengths.sum())
        self._bar.update(len(lengths))

    def __exit__(self, exc_type, exc, tb):
        self._bar.close()
        for f in (self._tokens, self._lengths, self._prompts):
            f.close()
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._atomic.__exit__(type(e), e, e.__traceback__)
                raise
        return self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self, chunk: int = 1 << 22) -> None:
        tmp, n = self.tmp, self.examples
        lengths = np.memmap(tmp / "lengths.tmp", dtype=np.int64, mode="r") if n else np.zeros(0, np.int64)
        prompts = np.memmap(tmp / "prompt_lengths.tmp", dtype=np.int32, mode="r") if n else np.zeros(0, np.int32)
        offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=np.int64, shape=(n + 1,))
        prompt_out = np.lib.format.open_memmap(tmp / "prompt_lengths.npy", mode="w+", dtype=np.int32, shape=(n,))
        offsets[0], total = 0, 0
        for start in range(0, n, chunk):  # bounded memory whatever n
            total = fill_offsets(offsets, start, total, lengths[start : start + chunk])
            prompt_out[start : start + chunk] = prompts[start : start + chunk]
        offsets.flush()
        prompt_out.flush()
        del offsets, prompt_out, lengths, prompts
        (tmp / "lengths.tmp").unlink()
        (tmp / "prompt_lengths.tmp").unlink()
        if self.segments is not None:
            atomic_write_json(tmp / "segments.json", self.segments)
        if self.stats is not None:
            atomic_write_json(tmp / "stats.json", self.stats)
        self.meta = {"examples": n, "tokens": total, "dtype": self.dtype.name, "vocab_size": self.vocab_size}
        atomic_write_json(tmp / "meta.json", self.meta)


def write_store(dataset, directory: Path, vocab_size: int, batch_size: int = 16384, progress: bool = True,
                stats: dict | None = None) -> dict:
    """Write a tokenised ``datasets`` table (columns input_ids, prompt_length; optionally sequence_lengths and
    sequence_prompt_lengths) as a store in ``directory``, batch by batch, with ``stats`` as stats.json. Tasks
    write into a :class:`StoreWriter` directly; this converts the ``RUN/tokenized`` set of older run directories."""
    import pyarrow.compute as pc

    for column in ("input_ids", "prompt_length"):
        if column not in dataset.column_names:
            raise XllamaError(f"tokenised set has no {column!r} column (columns: {', '.join(dataset.column_names)})")
    grouped = "sequence_lengths" in dataset.column_names
    with StoreWriter(directory, vocab_size, progress=progress) as writer:
        for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
            ids = batch.column("input_ids").combine_chunks()
            segments = None
            if grouped:
                segments = [list(zip(a, b)) for a, b in zip(batch.column("sequence_lengths").to_pylist(),
                                                            batch.column("sequence_prompt_lengths").to_pylist())]
            writer.add_flat(ids.flatten().to_numpy(zero_copy_only=False),
                            pc.list_value_length(ids).to_numpy(zero_copy_only=False),
                            batch.column("prompt_length").to_numpy(), segments)
        writer.stats = stats
    return writer.meta


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
