"""Write SYNTHETIC scaling points (scaling/points_synthetic.csv) for the notebook until measured ones exist.

Nothing here was measured. Scores are drawn from a known curve plus Gaussian noise so that a fit can be checked
against the truth:

    score = S_max[lang] - A[lang] * (size + X0) ** (-B) + Normal(0, NOISE)

with the exponent B and offset X0 shared by all languages (the 'joint' form of xllama.scaling.laws) and a
per-language ceiling S_max and scale A (the similarity factor: a language further from English has a larger A).
A is set from the score each language reaches at 1,000 pairs. The score is COMET-like (0-100).

    python scaling/make_synthetic_points.py            # rewrites scaling/points_synthetic.csv
    python scaling/make_synthetic_points.py --out x.csv --seed 7
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

B = 0.45  # shared exponent
X0 = 800.0  # shared offset (pairs)
NOISE = 0.6  # standard deviation of the score noise
SIZES = [500, 1000, 2000, 4000, 8000, 16000, 32000]
# lang: (S_max, score at 1,000 pairs)
LANGUAGES = {"de": (84.0, 70.0), "ru": (82.0, 64.0), "zh": (80.0, 58.0), "ar": (78.0, 50.0)}


def true_params() -> dict[str, dict[str, float]]:
    """The generating curve per language in the form S_max - A * (x + x0)^(-b)."""
    return {lang: {"S_max": s_max, "A": (s_max - at_1000) * (1000 + X0) ** B, "b": B, "x0": X0}
            for lang, (s_max, at_1000) in LANGUAGES.items()}


def generate(seed: int = 2023) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for lang, p in true_params().items():
        for size in SIZES:
            score = p["S_max"] - p["A"] * (size + p["x0"]) ** -p["b"] + rng.normal(0, NOISE)
            rows.append((lang, size, round(float(score), 3)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("points_synthetic.csv")))
    parser.add_argument("--seed", type=int, default=2023)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["lang", "size", "score", "source"])
        for lang, size, score in generate(args.seed):
            writer.writerow([lang, size, f"{score:.3f}", "synthetic"])
    print(f"wrote {args.out} (SYNTHETIC: known curve + noise, seed {args.seed})")


if __name__ == "__main__":
    main()
