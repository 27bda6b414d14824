"""Peak memory of the LM head + loss on one long packed row: full fp32 logits (naive) vs xllama's chunked loss.

naive:   F.cross_entropy(head(hidden).float(), labels, reduction="sum"), then backward (what the trainer did before)
chunked: xllama.train.loss.linear_cross_entropy(hidden, head, labels, chunk_tokens), then backward

Each case runs in its own process (one thread per process count given by --threads). Its memory is the peak
resident set (VmHWM) minus the resident set just before the loss, with the inputs (hidden states, LM head)
already allocated; it includes the gradients of the hidden states and of the head, which both methods produce.
Every row is all targets (the worst case). The hidden size only sets the time (the logits are tokens x vocab
whatever it is); losses and gradients of the two methods are compared on the same inputs.

    python benchmarks/training/bench_loss.py                 # 16K tokens at vocab 49,152 and 128,256 (hidden 256)
    python benchmarks/training/bench_loss.py --full          # naive at 16K x 128K too (needs ~25 GiB free)

Writes runs/benchmarks/training/loss_memory.md and .json (``--out`` to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from benchmarks.common import cpu_name  # noqa: E402
from xllama.io import atomic_write_json, atomic_write_text  # noqa: E402


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def worker(method: str, vocab: int, tokens: int, hidden: int, chunk: int, out: Path, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    from xllama.train.loss import linear_cross_entropy

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * hidden ** -0.5)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    if method == "naive":
        loss = F.cross_entropy(head(h).float(), labels, reduction="sum")
    else:
        loss = linear_cross_entropy(h, head, labels, chunk)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    torch.save({"loss": loss.detach(), "grad_h": h.grad, "grad_w": head.weight.grad}, out.with_suffix(".pt"))
    out.write_text(json.dumps({"method": method, "vocab": vocab, "tokens": tokens, "hidden": hidden,
                               "chunk_tokens": chunk if method == "chunked" else None, "seconds": seconds,
                               "peak_mib": (peak - before) / 1024, "loss": loss.item()}))


def run_case(work: Path, method: str, vocab: int, tokens: int, args) -> dict:
    out = work / f"{method}-{vocab}-{tokens}.json"
    cmd = [sys.executable, __file__, "--worker", method, "--vocab", str(vocab), "--tokens", str(tokens),
           "--hidden", str(args.hidden), "--chunk-tokens", str(args.chunk_tokens), "--threads", str(args.threads),
           "--result", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} vocab {vocab} tokens {tokens} failed:\n{proc.stderr[-2000:]}")
    r = json.loads(out.read_text())
    print(f"{method:8s} vocab {vocab:>7,} tokens {tokens:>6,}: {r['peak_mib']:8.0f} MiB, {r['seconds']:.1f}s",
          flush=True)
    return r


def agreement(work: Path, vocab: int, tokens: int) -> dict:
    import torch

    a = torch.load(work / f"naive-{vocab}-{tokens}.pt")
    b = torch.load(work / f"chunked-{vocab}-{tokens}.pt")
    rel = {k: ((a[k] - b[k]).abs().max() / a[k].abs().max()).item() for k in ("loss", "grad_h", "grad_w")}
    return {"vocab": vocab, "tokens": tokens, "max_relative_difference": rel}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--small-tokens", type=int, default=4096,
                   help="row length for naive (and the agreement check) where its fp32 logits would exceed "
                        "--naive-max-gib at --tokens")
    p.add_argument("--naive-max-gib", type=float, default=4.0)
    p.add_argument("--vocabs", default="49152,128256")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunk-tokens", type=int, default=4096, help="xllama's train.loss_chunk_tokens default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full", action="store_true", help="naive at every vocabulary with --tokens (much memory)")
    p.add_argument("--out", default=str(HERE.parent.parent / "runs" / "benchmarks" / "training"))
    p.add_argument("--worker", choices=("naive", "chunked"), help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.vocab, args.tokens, args.hidden, args.chunk_tokens, Path(args.result), args.threads)
        return 0

    import torch

    vocabs = [int(v) for v in args.vocabs.split(",")]
    load_before = os.getloadavg()
    rows, checks = [], []
    with tempfile.TemporaryDirectory(prefix="bench-loss-") as tmp:
        work = Path(tmp)
        for vocab in vocabs:
            fits = args.tokens * vocab * 4 <= args.naive_max_gib * 2**30
            naive_tokens = args.tokens if (args.full or fits) else args.small_tokens
            rows.append(run_case(work, "naive", vocab, naive_tokens, args))
            rows.append(run_case(work, "chunked", vocab, naive_tokens, args))
            checks.append(agreement(work, vocab, naive_tokens))
            if naive_tokens != args.tokens:
                rows.append(run_case(work, "chunked", vocab, args.tokens, args))
    load_after = os.getloadavg()
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in load_after]}
    lines = [f"hidden {args.hidden}, fp32, all tokens are targets, chunk {args.chunk_tokens:,} tokens, "
             f"{args.threads} threads; peak resident memory of loss + backward above the inputs",
             "", "| method | vocab | tokens | peak MiB | fp32 logits alone, MiB | time s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['vocab']:,} | {r['tokens']:,} | {r['peak_mib']:,.0f} | "
                     f"{r['tokens'] * r['vocab'] * 4 / 2**20:,.0f} | {r['seconds']:.1f} |")
    lines += ["", "| vocab | tokens | max relative difference: loss | grad hidden | grad head |", "| ---: | ---: | ---: | ---: | ---: |"]
    for c in checks:
        d = c["max_relative_difference"]
        lines.append(f"| {c['vocab']:,} | {c['tokens']:,} | {d['loss']:.1e} | {d['grad_h']:.1e} | {d['grad_w']:.1e} |")
    lines.append(f"\nMachine: {machine['cpu']}, {machine['cores']} cores, load average {load_before[0]:.1f} before / "
                 f"{load_after[0]:.1f} after; python {machine['python']}, torch {machine['torch']}.\n")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    atomic_write_json(out / "loss_memory.json", {"machine": machine, "settings": vars(args), "rows": rows,
                                                 "agreement": checks})
    atomic_write_text(out / "loss_memory.md", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
