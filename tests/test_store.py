"""The on-disk token store: StoreWriter round trips, errors leave nothing behind, 64-bit offsets, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xllama.errors import XllamaError
from xllama.train.store import StoreWriter, fill_offsets, open_store, token_dtype, write_store


def examples(store) -> list[list[int]]:
    return [store.example(i).tolist() for i in range(len(store))]


def test_writer_round_trip_with_lists_and_2d_arrays(tmp_path):
    with StoreWriter(tmp_path / "s", vocab_size=1000, progress=False) as writer:
        writer.add([[1, 2, 3], [4]], [1, 0])
        writer.add(np.array([[5, 6], [7, 8]], dtype=np.int32), np.array([1, 2]))
        writer.add([], [])  # an empty batch changes nothing
        writer.add_flat(np.array([9, 10, 11]), [1, 2], [0, 1])
        writer.stats = {"examples": 6, "note": "x"}
    assert writer.meta == {"examples": 6, "tokens": 11, "dtype": "uint16", "vocab_size": 1000}
    store = open_store(tmp_path / "s")
    assert examples(store) == [[1, 2, 3], [4], [5, 6], [7, 8], [9], [10, 11]]
    assert store.prompt_lengths.tolist() == [1, 0, 1, 2, 0, 1]
    assert store.offsets.dtype == np.int64 and store.offsets.tolist() == [0, 3, 4, 6, 8, 9, 11]
    assert store.segments is None
    assert json.loads((tmp_path / "s/stats.json").read_text()) == {"examples": 6, "note": "x"}
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [  # no scratch file left
        "meta.json", "offsets.npy", "prompt_lengths.npy", "stats.json", "tokens.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary directory left


def test_writer_dtype_follows_the_vocabulary(tmp_path):
    with StoreWriter(tmp_path / "a", vocab_size=65536, progress=False) as writer:
        writer.add([[0, 65535]], [1])
    with StoreWriter(tmp_path / "b", vocab_size=152064, progress=False) as writer:
        writer.add([[0, 65536, 152063]], [1])
    assert open_store(tmp_path / "a").ids.dtype == np.uint16 and examples(open_store(tmp_path / "a")) == [[0, 65535]]
    assert open_store(tmp_path / "b").ids.dtype == np.uint32
    assert examples(open_store(tmp_path / "b")) == [[0, 65536, 152063]]
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_writer_keeps_segments_of_grouped_examples(tmp_path):
    with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
        writer.add([[1, 2, 3, 4, 5], [6, 7, 8]], [1, 1], segments=[[(3, 1), (2, 1)], [(1, 1), (2, 1)]])
        writer.add([[9, 9]], [1], segments=[[(1, 0), (1, 1)]])
    store = open_store(tmp_path / "s")
    assert store.segments == [((3, 1), (2, 1)), ((1, 1), (2, 1)), ((1, 0), (1, 1))]
    assert [(x.tolist(), p) for x, p in store.sequences(0)] == [([1, 2, 3], 1), ([4, 5], 1)]
    assert store.target_counts.tolist() == [2 + 1, 0 + 1, 0 + 0]


@pytest.mark.parametrize("bad", ["missing later", "missing first", "wrong sum", "prompt past sequence"])
def test_writer_rejects_inconsistent_segments_and_leaves_nothing(tmp_path, bad):
    with pytest.raises(XllamaError, match="segments"):
        with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
            if bad == "missing later":
                writer.add([[1, 2]], [1], segments=[[(1, 1), (1, 1)]])
                writer.add([[1, 2]], [1])
            elif bad == "missing first":
                writer.add([[1, 2]], [1])
                writer.add([[1, 2]], [1], segments=[[(1, 1), (1, 1)]])
            elif bad == "wrong sum":
                writer.add([[1, 2, 3]], [1], segments=[[(1, 1), (1, 1)]])
            else:
                writer.add([[1, 2]], [1], segments=[[(1, 1), (1, 2)]])
    assert list(tmp_path.iterdir()) == []


def test_unknown_example_count_offsets_built_in_chunks(tmp_path, monkeypatch):
    """Many batches of unknown sizes (some empty); the offsets are made in chunks smaller than the data."""
    finish = StoreWriter._finish
    monkeypatch.setattr(StoreWriter, "_finish", lambda self: finish(self, chunk=7))
    rng = np.random.default_rng(0)
    expected = []
    with StoreWriter(tmp_path / "s", vocab_size=500, progress=False) as writer:
        for _ in range(60):
            batch = [rng.integers(0, 500, size=int(n)).tolist() for n in rng.integers(1, 20, size=rng.integers(0, 9))]
            writer.add(batch, [min(2, len(x) - 1) for x in batch])
            expected += batch
    store = open_store(tmp_path / "s")
    assert len(store) == len(expected) > 100 and examples(store) == expected
    assert store.offsets.tolist() == [0, *np.cumsum([len(x) for x in expected]).tolist()]
    assert store.prompt_lengths.tolist() == [min(2, len(x) - 1) for x in expected]


@pytest.mark.parametrize("token", [1000, -1])
def test_vocabulary_overflow_is_an_error_and_writes_nothing(tmp_path, token):
    with pytest.raises(XllamaError, match=f"token id {token} is outside the vocabulary \\(1000\\)"):
        with StoreWriter(tmp_path / "s", vocab_size=1000, progress=False) as writer:
            writer.add([[1, 2]], [1])
            writer.add([[3, token]], [1])
    assert list(tmp_path.iterdir()) == []


def test_an_error_inside_the_block_leaves_no_directory_and_keeps_an_old_store(tmp_path):
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
            writer.add([[1, 2]], [1])
            raise RuntimeError("tokenizer crashed")
    assert list(tmp_path.iterdir()) == []
    with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
        writer.add([[5, 6]], [1])
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
            writer.add([[7]], [0])
            raise RuntimeError("interrupted")
    assert examples(open_store(tmp_path / "s")) == [[5, 6]]  # the finished store is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_mismatched_lengths_are_an_error(tmp_path):
    with pytest.raises(XllamaError, match="do not match"):
        with StoreWriter(tmp_path / "s", vocab_size=100, progress=False) as writer:
            writer.add_flat(np.array([1, 2, 3]), [2], [1])
    assert not (tmp_path / "s").exists()


def test_store_offsets_past_2_to_the_31():
    """Offsets are int64 throughout: a running total past 2**31 stays exact (int32 would wrap)."""
    offsets = np.zeros(6, dtype=np.int64)  # lengths may come as int32 (pyarrow's list lengths)
    total = fill_offsets(offsets, 1, 2**31 - 10, np.array([5, 2**30, 2**30, 7], dtype=np.int32))
    assert offsets.tolist() == [0, 0, 2**31 - 5, 2**31 - 5 + 2**30, 2**32 - 5, 2**32 + 2]
    assert total == 2**32 + 2
    assert fill_offsets(offsets, 5, total, np.zeros(0, np.int32)) == total


def test_store_reads_an_example_past_2_to_the_31_tokens(tmp_path):
    """A memory-mapped store whose last example starts past token 2**31 (a sparse 4 GiB file: no disk used)."""
    from xllama.train.packing import packed_row

    start, n = 2**31 + 3, 5
    with open(tmp_path / "tokens.bin", "wb") as f:
        f.seek(2 * start)
        f.write(np.arange(10, 10 + n, dtype=np.uint16).tobytes())
    np.save(tmp_path / "offsets.npy", np.array([0, start, start + n], dtype=np.int64))
    np.save(tmp_path / "prompt_lengths.npy", np.array([0, 2], dtype=np.int32))
    (tmp_path / "meta.json").write_text(json.dumps({"examples": 2, "tokens": start + n, "dtype": "uint16",
                                                    "vocab_size": 100}))
    store = open_store(tmp_path)
    assert store.example(1).tolist() == [10, 11, 12, 13, 14]
    assert int(store.lengths[0]) == start and int(store.target_counts[1]) == 3
    assert packed_row(store, [1])["labels"].tolist() == [[-100, 12, 13, 14, -100]]


def test_write_store_converts_a_tokenised_set_and_reports_incomplete_stores(tmp_path):
    """write_store: the RUN/tokenized set of older run directories -> a store (with segments and stats)."""
    from datasets import Dataset

    rows = {"input_ids": [[1, 2, 3], [4], [5, 6, 70000]], "prompt_length": [1, 0, 2],
            "sequence_lengths": [[2, 1], [1], [1, 2]], "sequence_prompt_lengths": [[1, 0], [0], [0, 2]]}
    meta = write_store(Dataset.from_dict(rows), tmp_path / "s", vocab_size=70001, batch_size=2, progress=False,
                       stats={"examples": 3})
    assert meta == {"examples": 3, "tokens": 7, "dtype": "uint32", "vocab_size": 70001}
    store = open_store(tmp_path / "s")
    assert examples(store) == rows["input_ids"] and store.prompt_lengths.tolist() == [1, 0, 2]
    assert store.segments == [((2, 1), (1, 0)), ((1, 0),), ((1, 0), (2, 2))]
    assert json.loads((tmp_path / "s/stats.json").read_text()) == {"examples": 3}
    with pytest.raises(XllamaError, match="outside the vocabulary"):
        write_store(Dataset.from_dict(rows), tmp_path / "t", vocab_size=1000, progress=False)
    assert not (tmp_path / "t").exists()
    (tmp_path / "s/offsets.npy").unlink()
    with pytest.raises(XllamaError, match="offsets.npy missing"):
        open_store(tmp_path / "s")


def test_store_is_written_and_opened_in_bounded_memory(tmp_path):
    """200M tokens (763 MiB as int32, 381 MiB in tokens.bin) written through StoreWriter in batches, as a task
    does, then opened: each process's own memory grows by a small fraction of the data (the benchmark
    benchmarks/training/bench_scale.py --store runs the same at 300M)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks/training/bench_scale.py"
    proc = subprocess.run([sys.executable, str(bench), "--store", "--tokens", "200000000", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    written, opened = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert written["tokens"] == opened["tokens"] >= 200_000_000
    assert (tmp_path / "store/tokens.bin").stat().st_size == 2 * written["tokens"]  # uint16
    data_mib = 4 * written["tokens"] / 2**20
    assert written["anon_peak_mib"] - written["anon_start_mib"] < 0.1 * data_mib
    assert written["vm_hwm_mib"] < 0.25 * data_mib  # peak RSS, imports included: no copy of the tokens
    assert opened["anon_peak_mib"] - opened["anon_start_mib"] < 0.1 * data_mib
