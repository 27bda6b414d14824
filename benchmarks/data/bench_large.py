"""Peak memory and speed of `xllama data build` on a large synthetic parallel corpus.

Generates N synthetic en-de sentence pairs (seeded; words drawn from a fixed vocabulary with a Zipf-like
distribution, 5-30 words a side, 1% exact duplicates) as a Moses pair ``corpus.en`` / ``corpus.de``, then runs

    xllama data build --mix custom --parallel en-de=DIR/corpus --no-guard --accept-language-mismatch --out DIR/mix

in a child process and reports its wall time, pairs/s and peak resident memory (ru_maxrss of the child). The
goal of issue 15 is 5M pairs under 2 GiB peak RSS.

    python benchmarks/data/bench_large.py --pairs 5000000 --dir /tmp/large --json /tmp/large.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path


def generate(folder: Path, pairs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab_en = [f"w{i}" for i in range(20000)]
    vocab_de = [f"v{i}" for i in range(20000)]
    cum_weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(20000)))  # Zipf-like
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.en", "w", encoding="utf-8") as en, \
            open(folder / "corpus.de", "w", encoding="utf-8") as de:
        previous = ("a b c", "d e f")
        for i in range(pairs):
            if i and rng.random() < 0.01:
                a, b = previous  # an exact duplicate
            else:
                n = rng.randint(5, 30)
                a = " ".join(rng.choices(vocab_en, cum_weights=cum_weights, k=n)) + "."
                b = " ".join(rng.choices(vocab_de, cum_weights=cum_weights, k=max(1, n + rng.randint(-3, 3)))) + "."
            en.write(a + "\n")
            de.write(b + "\n")
            previous = (a, b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5_000_000)
    parser.add_argument("--dir", required=True, help="working folder (corpus and mix are written here)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    folder = Path(args.dir).resolve()
    corpus = folder / "corpus"
    if not (folder / "corpus.en").is_file() or sum(1 for _ in open(folder / "corpus.en", "rb")) != args.pairs:
        started = time.perf_counter()
        generate(folder, args.pairs)
        print(f"generated {args.pairs:,} pairs in {time.perf_counter() - started:.0f}s", flush=True)
    out = folder / "mix"
    cmd = [sys.executable, "-m", "xllama", "data", "build", "--mix", "custom", "--parallel", f"en-de={corpus}",
           "--no-guard", "--accept-language-mismatch", "--out", str(out), "--overwrite", "--quiet"]
    load_start = os.getloadavg()
    started = time.perf_counter()
    # The child runs in the working folder: `python -m` puts the current directory first on sys.path, so run
    # from the repository root it would import that checkout even with an older one on PYTHONPATH.
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss includes this parent's RSS at fork (small here)
    which = subprocess.run([sys.executable, "-c", "import xllama; print(xllama.__file__)"], capture_output=True,
                           text=True, cwd=folder).stdout.strip()
    result = {"pairs": args.pairs, "xllama": which, "returncode": proc.returncode, "wall_s": round(wall, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "pairs_per_s": round(args.pairs / wall),
              "peak_rss_mib": round(usage.ru_maxrss / 1024), "load_start": load_start, "load_end": os.getloadavg(),
              "stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
