"""Sampling: the one seeded sub-sampler, language weights and temperature, and the shipped sample dataset.

``draw`` takes a sub-sample of a source, nested (with the same seed and source name a 5K sample lies inside the
10K sample) and, when more is wanted than there is, repeats the source (``repeat``) or stops short; it reports
how many records were available, drawn, repeated and dropped. ``language_shares`` gives each language its share
of a budget: fixed weights, or temperature sampling p_l ~ n_l^(1/T) (the mT5 convention: T = 1 keeps the natural
proportions, larger T flattens them toward uniform). ``allocate`` splits a total by shares exactly.

The sample dataset shipped with the package, so that the quickstart runs offline with no other data.

Written for xllama (not taken from Alpaca or any corpus): 60 instructions with answers in English, with
Chinese and German versions; 80 English sentences with Chinese and German translations; and a tiny
"evaluation set" (``guard.txt``) of which two sentences also occur among the pairs, so a sample build shows
the contamination guard at work. The files use different formats on purpose (bilingual JSON, JSONL, Moses
pair, JSONL translation records, plain text), so the quickstart exercises the real loaders.

It is far too small to teach a model a language: it exists to check that the pipeline runs end to end.
"""

from __future__ import annotations

import array
import logging
import math
import random
from pathlib import Path

import numpy as np

from xllama.errors import XllamaError
from xllama.languages import parse_languages

log = logging.getLogger(__name__)


def draw(indices, size: int | float | None, seed: int, name: str, repeat: bool = False):
    """A seeded, nested sub-sample of ``indices`` -> (chosen indices in order, accounting).

    ``size`` is a count, a fraction of what is available, or None (all). More than available: with ``repeat``
    every record is used ``size // available`` times and a nested sample makes up the rest; without, all are used
    once and the shortfall is logged. The accounting: requested, wanted, available, drawn (records in the output,
    repeats included), repeated (drawn beyond the first copy), dropped (available but not drawn).

    ``indices`` is a list (a list is returned) or an int64 numpy array (an array is returned: millions of
    records stay 8 bytes each). Both draw the same records: the seeded shuffle is Python's ``random.shuffle``,
    run on an ``array.array`` for arrays.
    """
    as_array = isinstance(indices, np.ndarray)
    available = len(indices)
    want = available if size is None else round(size * available) if isinstance(size, float) else size

    def shuffled():
        order = array.array("q", np.asarray(indices, dtype=np.int64).tobytes()) if as_array else list(indices)
        random.Random(f"{seed}:{name}").shuffle(order)
        return np.frombuffer(order, dtype=np.int64) if as_array else order

    if want == available:
        chosen = indices.copy() if as_array else list(indices)
    elif want < available:
        chosen = np.sort(shuffled()[:want]) if as_array else sorted(shuffled()[:want])
    elif repeat and available:
        copies, rest = divmod(want, available)
        if as_array:
            chosen = np.sort(np.concatenate([np.tile(indices, copies), shuffled()[:rest]]))
        else:
            chosen = sorted(list(indices) * copies + shuffled()[:rest])
    else:
        if want > available:
            log.warning("%s: %d examples requested but only %d available after cleaning; using %d",
                        name, want, available, available)
        chosen = indices.copy() if as_array else list(indices)
    distinct = min(len(chosen), available)
    return chosen, {"requested": size, "wanted": want, "available": available, "drawn": len(chosen),
                    "used": len(chosen), "repeated": len(chosen) - distinct, "dropped": available - distinct}


def language_shares(sizes: dict[str, float], temperature: float = 1.0,
                    weights: dict[str, float] | None = None) -> dict[str, float]:
    """Shares proportional to ``weights[l]`` (fixed weights) or else to ``sizes[l] ** (1 / temperature)``."""
    if weights is not None:
        raw = {lang: float(weights[lang]) for lang in sizes}
    else:
        raw = {lang: float(n) ** (1.0 / temperature) for lang, n in sizes.items()}
    total = sum(raw.values())
    if total <= 0:
        raise XllamaError(f"cannot share out a budget over {', '.join(sizes)}: every size or weight is 0")
    return {lang: w / total for lang, w in raw.items()}


def allocate(shares: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` by ``shares`` (largest remainder, ties in order, so the counts add up exactly)."""
    exact = {key: share * total for key, share in shares.items()}
    counts = {key: int(math.floor(x)) for key, x in exact.items()}
    left = total - sum(counts.values())
    for key in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), list(shares).index(k)))[:left]:
        counts[key] += 1
    return counts


SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_LANGUAGES = ("zh", "de")

SAMPLE_INSTRUCTIONS = {
    "en": "instructions.en-zh.json",  # bilingual records: en_instruction, ..., zh_output
    "zh": "instructions.en-zh.json",
    "de": "instructions.de.jsonl",  # Alpaca JSONL
}
SAMPLE_PARALLEL = {
    "en-zh": "pairs.en-zh",  # Moses prefix: pairs.en-zh.en + pairs.en-zh.zh
    "en-de": "pairs.en-de.jsonl",  # {"translation": {"en": ..., "de": ...}}
}
SAMPLE_GUARD = "guard.txt"


def _check_languages(languages) -> list[str]:
    langs = [lang for lang in parse_languages(languages) if lang != "en"] if languages else []
    unknown = [lang for lang in langs if lang not in SAMPLE_LANGUAGES]
    if unknown:
        raise XllamaError(
            f"the shipped sample has no data for {', '.join(unknown)}; sample languages: {', '.join(SAMPLE_LANGUAGES)} "
            "(pass your own data with --instructions/--parallel)"
        )
    return langs


def sample_spec(languages=("zh",), mix: str | None = None, seed: int = 42, **settings):
    """A MixSpec over the shipped sample: x-llama for one language, m-llama for several, or ``mix``.

    ``settings`` are any other MixSpec keys (sizes, directions, ...); the same as ``MixSpec.from_dict`` with
    ``sample: true``.
    """
    from xllama.data.mix import MixSpec

    langs = _check_languages(languages)
    if mix is None:
        mix = "m-llama" if len(langs) > 1 else "x-llama"
    d = {**settings, "mix": mix, "languages": langs, "seed": seed, "sample": True}
    return MixSpec.from_dict(d, where="sample")


def fill_from_sample(spec, where: str) -> None:
    """Fill a spec's missing instructions/parallel/guard with the sample's files (``sample: true``)."""
    langs = _check_languages(spec.languages or None)
    if not langs and spec.mix != "alpaca":
        raise XllamaError(f"{where}.languages: say which sample language(s) to use: {', '.join(SAMPLE_LANGUAGES)}")
    for lang in ["en"] if spec.mix == "alpaca" else ["en", *langs]:
        spec.instructions.setdefault(lang, [str(SAMPLE_DIR / SAMPLE_INSTRUCTIONS[lang])])
    if spec.mix != "alpaca":
        for lang in langs:
            if f"en-{lang}" not in spec.parallel and f"{lang}-en" not in spec.parallel:
                spec.parallel[f"en-{lang}"] = [str(SAMPLE_DIR / SAMPLE_PARALLEL[f"en-{lang}"])]
    if not spec.guard:
        spec.guard = [str(SAMPLE_DIR / SAMPLE_GUARD)]
