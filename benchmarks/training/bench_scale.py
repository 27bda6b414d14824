"""Training data at scale: per-step planning time against the number of examples, and the token store's memory.

Two measurements, both on synthetic data (lengths and tokens from a seeded generator; what is measured does not
depend on the text):

``--planning``: the time of ``plan_step`` (global batch 128, micro_batch_tokens 8192, world size 8) at a small
N and at N = 40M examples. Reported: the first step of an epoch (it makes the epoch's permutation, once) and
the mean of the following steps. Baseline, measured in the same run: the former step planning, which made the
epoch's permutation and recomputed all lengths at every step (``baseline_plan_step`` below, kept verbatim
in spirit: permutation of N + np.diff of the offsets + the same packing).

``--store``: writes ``--tokens`` tokens into the store with ``StoreWriter``, as a task's ``tokenize`` does
(batches of ``--batch-size`` examples of 64-1023 seeded random tokens, made in the writing process: nothing else
holds them), then opens it with ``open_store``, each in a fresh process, reporting the process's peak anonymous
memory (RssAnon sampled every 10 ms; file pages of the memory maps are page cache, not the process's own memory)
and its peak RSS (VmHWM, which counts mapped file pages too). Bounded means: the anonymous peak does not grow
with the data.

    python benchmarks/training/bench_scale.py --planning
    python benchmarks/training/bench_scale.py --store --tokens 300000000 --work /tmp/store-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def synthetic_store(n: int, seed: int = 0):
    from xllama.train.packing import TokenStore

    rng = np.random.default_rng(seed)
    lengths = rng.integers(32, 512, size=n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenStore(np.zeros(0, np.uint16), offsets, np.full(n, 16, dtype=np.int32))


def baseline_plan_step(step, store, global_batch_size, micro_batch_tokens, world_size, seed):
    """The former planning: the epoch permutation and all lengths recomputed at every step."""
    from xllama.train.packing import pack, split_across_ranks, steps_per_epoch

    lengths = np.diff(store.offsets)
    per_epoch = steps_per_epoch(len(store), global_batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(store))
    indices = order[k * global_batch_size : (k + 1) * global_batch_size]
    per_rank = [pack(share, lengths, micro_batch_tokens) for share in split_across_ranks(indices, lengths, world_size)]
    most = max(len(m) for m in per_rank)
    return [m + [[] for _ in range(most - len(m))] for m in per_rank]


def time_planning(n: int, steps: int, baseline_steps: int) -> dict:
    from xllama.train.packing import epoch_order, plan_step

    store = synthetic_store(n)
    args = (128, 8192, 8, 0)
    epoch_order.cache_clear()
    tick = time.perf_counter()
    first = plan_step(0, store, *args)
    first_s = time.perf_counter() - tick
    tick = time.perf_counter()
    for s in range(1, steps + 1):
        plan = plan_step(s, store, *args)
    per_step = (time.perf_counter() - tick) / steps
    tick = time.perf_counter()
    for s in range(1, baseline_steps + 1):
        ref = baseline_plan_step(s, store, *args)
    base = (time.perf_counter() - tick) / baseline_steps
    assert ref == plan_step(baseline_steps, store, *args)  # the same plan, only cheaper
    assert sum(len(mb) for rank in first for mb in rank) == 128
    return {"examples": n, "first_step_s": first_s, "per_step_s": per_step, "baseline_per_step_s": base}


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class PeakAnon:
    """Samples RssAnon every 10 ms in a thread; ``peak`` in KiB."""

    def __enter__(self):
        self.peak, self._stop = rss_anon_kib(), threading.Event()
        self.start = self.peak
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kib())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kib())


def synthetic_batches(tokens: int, batch_size: int, seed: int = 0):
    """Tokenised batches (flat tokens, lengths, prompt lengths) of about ``tokens`` tokens in all: examples of
    64-1023 tokens below 50,000, prompts a quarter of the length (at most 200)."""
    rng = np.random.default_rng(seed)
    written = 0
    while written < tokens:
        lengths = rng.integers(64, 1024, size=batch_size)
        values = rng.integers(0, 50000, size=int(lengths.sum()), dtype=np.int32)
        yield values, lengths, np.minimum(lengths // 4, 200)
        written += int(lengths.sum())


def child(mode: str, work: Path, tokens: int, batch_size: int) -> None:
    """Run in a fresh process: write or open the store, print the memory figures as JSON."""
    from xllama.train.store import StoreWriter, open_store

    tick = time.perf_counter()
    with PeakAnon() as mem:
        if mode == "write":
            with StoreWriter(work / "store", vocab_size=50000, progress=False) as writer:
                for values, lengths, prompts in synthetic_batches(tokens, batch_size):
                    writer.add_flat(values, lengths, prompts)
                writer.stats = {"synthetic": True}
            meta = dict(writer.meta)
        else:
            store = open_store(work / "store")
            meta = {"examples": len(store), "tokens": int(store.offsets[-1])}
            # what training touches at start: per-example lengths and target counts, and 1000 random examples
            _ = store.lengths, store.target_counts
            rng = np.random.default_rng(0)
            meta["checksum"] = int(sum(int(store.example(int(i)).sum()) for i in rng.integers(0, len(store), 1000)))
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - tick, "anon_start_mib": mem.start / 1024,
                      "anon_peak_mib": mem.peak / 1024, "vm_hwm_mib": vm_hwm_kib() / 1024, **meta}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planning", action="store_true")
    parser.add_argument("--store", action="store_true")
    parser.add_argument("--sizes", default="40000,40000000", help="numbers of examples for --planning")
    parser.add_argument("--tokens", type=int, default=300_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xllama-store-bench"))
    parser.add_argument("--batch-size", type=int, default=4096, help="examples per write batch")
    parser.add_argument("--child", choices=["write", "open"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.tokens, args.batch_size)
        return
    if args.planning:
        for n in map(int, args.sizes.split(",")):
            print(json.dumps(time_planning(n, steps=200, baseline_steps=3 if n > 10**6 else 50)), flush=True)
    if args.store:
        args.work.mkdir(parents=True, exist_ok=True)
        for mode in ("write", "open"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(args.work),
                                  "--tokens", str(args.tokens), "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
