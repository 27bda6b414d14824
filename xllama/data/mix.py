"""The mixer: instruction sets + parallel corpora -> one cleaned, shuffled CoIT/MuIT training mix.

x-LLaMA (Zhu et al. 2023) tunes an English LLM on English Alpaca, Alpaca translated into the target language,
and parallel sentence pairs posed as translation instructions (English -> target by default). A ``MixSpec``
says which data, how much of each and how to clean it; ``build_mix`` turns it into a ``datasets.Dataset`` with
the columns ``instruction, input, output, source, lang, direction`` plus a manifest that records what went in,
what was removed and why, and a content hash, so two runs can be compared by a single string.

Each source is first checked to be in its labelled language (:mod:`xllama.data.langid`). Cleaning, in this
order, per source: drop empty sides and (for pairs) over-long sides and extreme length ratios ("filtered"); drop
examples that break a rule of the contamination guard (:mod:`xllama.data.guard`: normalised keys, n-gram overlap)
against a registered evaluation set ("contamination"); drop duplicates ("duplicates", by hash of the normalised
text); then size each source (:mod:`xllama.data.sample`: counts, fractions, language weights or temperature;
down- or up-sampled). Sub-samples are nested: with the same seed, a 5K sample of a corpus is contained in its 10K
sample.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
from xllama.data.langid import SAMPLE as LANGID_SAMPLE
from xllama.data.langid import LanguageChecker
from xllama.data.sample import allocate, draw, language_shares
from xllama.data.sources import (
    InstructionData,
    ParallelData,
    load_guard,
    load_instructions,
    load_parallel,
    text_length,
)
from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json, content_hash, read_json
from xllama.languages import get_language, parse_pair
from xllama.prompts import translation_instruction

log = logging.getLogger(__name__)

MIXES = ("x-llama", "m-llama", "alpaca", "custom")
DIRECTIONS = ("en-x", "x-en", "both")
COLUMNS = ("instruction", "input", "output", "source", "lang", "direction")
TRANSLATION = "translation"
MANIFEST = "manifest.json"
MIX_FORMAT = "xllama-mix"


def instruction_source(lang: str) -> str:
    return f"alpaca_{lang}"


# ----------------------------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------------------------


@dataclass
class MixSpec:
    """What goes into a mix. Locations are local paths (relative to the current directory) or hf:owner/name."""

    mix: str = "x-llama"  # x-llama | m-llama | alpaca | custom
    languages: list[str] = field(default_factory=list)  # target languages (not English)
    instructions: dict[str, list[str]] = field(default_factory=dict)  # lang -> locations
    parallel: dict[str, list[str]] = field(default_factory=dict)  # "en-zh" -> locations
    guard: list[str] = field(default_factory=list)  # evaluation sets whose sentences must not be trained on
    sizes: dict[str, int | float] = field(default_factory=dict)  # "alpaca_zh" -> count, or fraction in (0, 1]
    parallel_sizes: dict[str, int | float] = field(default_factory=dict)  # "zh" (or "en-zh") -> pairs
    allocation: str | None = None  # a scaling allocation JSON that fills parallel_sizes (provenance)
    directions: str = "en-x"  # en-x (the paper) | x-en | both
    seed: int = 42
    dedup: bool = True
    guard_enabled: bool = True
    min_length: int = 1  # per side of a pair, text_length units (CJK characters count 3)
    max_length: int | None = 1500
    max_length_ratio: float | None = 3.0  # longer side / shorter side, text_length units
    sample: bool = False  # fill missing instructions/parallel/guard from the package's shipped sample
    accept_language_mismatch: bool = False  # build even when a source is not in its labelled language
    upsample: bool = False  # a size beyond what a source has repeats it (else: all of it, once)
    temperature: float | None = None  # target languages' sources sized by n_l^(1/T) (m-LLaMA; implies upsample)
    weights: dict[str, float] = field(default_factory=dict)  # or by fixed per-language weights (implies upsample)

    # -- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict, where: str = "mix") -> "MixSpec":
        """Validate a YAML-style dict; an unknown key or bad value names ``where.key``."""
        if not isinstance(d, dict):
            raise XllamaError(f"{where}: expected a mapping of mix settings, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise XllamaError(f"{where}.{key}: unknown key; expected one of {', '.join(known)}")
        spec = cls()
        at = lambda key: f"{where}.{key}"  # noqa: E731

        if "mix" in d:
            spec.mix = _choice(d["mix"], MIXES, at("mix"))
        if "directions" in d:
            spec.directions = _choice(d["directions"], DIRECTIONS, at("directions"))
        for key in ("dedup", "guard_enabled", "sample", "accept_language_mismatch", "upsample"):
            if key in d:
                if not isinstance(d[key], bool):
                    raise XllamaError(f"{at(key)}: expected true or false, got {d[key]!r}")
                setattr(spec, key, d[key])
        if "seed" in d:
            spec.seed = _int(d["seed"], at("seed"), minimum=0)
        if "min_length" in d:
            spec.min_length = _int(d["min_length"], at("min_length"), minimum=0)
        if "max_length" in d:
            spec.max_length = None if d["max_length"] is None else _int(d["max_length"], at("max_length"), minimum=1)
        if "max_length_ratio" in d:
            value = d["max_length_ratio"]
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 1):
                raise XllamaError(f"{at('max_length_ratio')}: expected a number >= 1 or null, got {value!r}")
            spec.max_length_ratio = None if value is None else float(value)

        if "languages" in d and d["languages"] is not None:
            value = d["languages"]
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list):
                raise XllamaError(f"{at('languages')}: expected a list of language codes, got {value!r}")
            for i, item in enumerate(items):
                code = _language(item, f"{at('languages')}[{i}]")
                if code == "en" and spec.mix == "alpaca":
                    continue  # the English-only baseline: nothing to add
                if code == "en":
                    raise XllamaError(f"{at('languages')}[{i}]: list target languages only (English is always in)")
                if code not in spec.languages:
                    spec.languages.append(code)

        for lang, locations in _mapping(d.get("instructions"), at("instructions")).items():
            code = _language(lang, f"{at('instructions')}.{lang}")
            spec.instructions[code] = _locations(locations, f"{at('instructions')}.{lang}")
        for pair, locations in _mapping(d.get("parallel"), at("parallel")).items():
            try:
                src, tgt = parse_pair(str(pair))
            except XllamaError as e:
                raise XllamaError(f"{at('parallel')}.{pair}: {e}") from None
            spec.parallel[f"{src}-{tgt}"] = _locations(locations, f"{at('parallel')}.{pair}")
        if d.get("guard") is not None:
            guard = d["guard"]
            spec.guard = _locations(guard, at("guard"))

        if spec.sample:
            from xllama.data.sample import fill_from_sample

            fill_from_sample(spec, where)
        if not spec.languages and spec.mix in ("x-llama", "m-llama", "custom"):
            spec.languages = spec._languages_from_sources()
        spec._check_mix(where)

        for key, value in _mapping(d.get("sizes"), at("sizes")).items():
            sources = spec.instruction_sources()
            if key not in {instruction_source(lang) for lang in sources}:
                names = ", ".join(instruction_source(lang) for lang in sources) or "none"
                raise XllamaError(
                    f"{at('sizes')}.{key}: unknown source; this mix's instruction sources are {names} "
                    "(size parallel pairs with parallel_sizes)"
                )
            spec.sizes[key] = _size(value, f"{at('sizes')}.{key}")
        pairs = spec.pair_sources()
        for key, value in _mapping(d.get("parallel_sizes"), at("parallel_sizes")).items():
            spec.parallel_sizes[spec._pair_size_key(str(key), pairs, f"{at('parallel_sizes')}.{key}")] = _size(
                value, f"{at('parallel_sizes')}.{key}"
            )
        if d.get("allocation") is not None:
            spec.allocation = str(d["allocation"])
            spec._apply_allocation(at("allocation"))
        if d.get("temperature") is not None:
            value = d["temperature"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise XllamaError(f"{at('temperature')}: expected a positive number (1: natural proportions, "
                                  f"larger: flatter), got {value!r}")
            spec.temperature = float(value)
        targets = [lang for lang in spec.languages if lang != "en"]
        for lang, value in _mapping(d.get("weights"), at("weights")).items():
            code = _language(lang, f"{at('weights')}.{lang}")
            if code not in targets:
                raise XllamaError(f"{at('weights')}.{lang}: not a target language of this mix ({', '.join(targets)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise XllamaError(f"{at('weights')}.{lang}: expected a positive number, got {value!r}")
            spec.weights[code] = float(value)
        if spec.weights:
            if spec.temperature is not None:
                raise XllamaError(f"{where}: give weights (fixed shares) or temperature (p ~ n^(1/T)), not both")
            missing = [lang for lang in targets if lang not in spec.weights]
            if missing:
                raise XllamaError(f"{at('weights')}: no weight for {', '.join(missing)}; give one per target language")
        return spec

    def to_dict(self) -> dict:
        """The YAML-friendly dict that ``from_dict`` reads back (allocation is folded into parallel_sizes)."""
        plain = lambda locs: locs[0] if len(locs) == 1 else list(locs)  # noqa: E731
        return {
            "mix": self.mix,
            "languages": list(self.languages),
            "instructions": {lang: plain(locs) for lang, locs in self.instructions.items()},
            "parallel": {pair: plain(locs) for pair, locs in self.parallel.items()},
            "guard": list(self.guard),
            "sizes": dict(self.sizes),
            "parallel_sizes": dict(self.parallel_sizes),
            "directions": self.directions,
            "seed": self.seed,
            "dedup": self.dedup,
            "guard_enabled": self.guard_enabled,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "max_length_ratio": self.max_length_ratio,
            "sample": self.sample,
            "accept_language_mismatch": self.accept_language_mismatch,
            "upsample": self.upsample,
            "temperature": self.temperature,
            "weights": dict(self.weights),
        }

    # -- what the named mixes use -------------------------------------------------------------------------

    def instruction_sources(self) -> list[str]:
        """Languages whose instruction data the mix uses, in order."""
        if self.mix == "alpaca":
            return ["en"]
        if self.mix == "custom":
            return list(self.instructions)
        return ["en", *self.languages]

    def pair_sources(self) -> list[str]:
        """Parallel corpora ('en-zh') the mix uses, in order."""
        if self.mix == "alpaca":
            return []
        if self.mix == "custom":
            return list(self.parallel)
        return [self._pair_key(lang) for lang in self.languages]

    def _pair_key(self, lang: str) -> str:
        for key in (f"en-{lang}", f"{lang}-en"):
            if key in self.parallel:
                return key
        return f"en-{lang}"

    def _languages_from_sources(self) -> list[str]:
        langs = [lang for lang in self.instructions if lang != "en"]
        for pair in self.parallel:
            langs += [lang for lang in pair.split("-") if lang != "en"]
        return list(dict.fromkeys(langs))

    def _check_mix(self, where: str) -> None:
        if self.mix == "x-llama" and len(self.languages) != 1:
            got = ", ".join(self.languages) or "none"
            raise XllamaError(f"{where}.languages: mix x-llama takes exactly one target language (got {got}); "
                              "use mix m-llama for several")
        if self.mix == "m-llama" and not self.languages:
            raise XllamaError(f"{where}.languages: mix m-llama needs at least one target language")
        for lang in self.instruction_sources():
            if lang not in self.instructions:
                raise XllamaError(f"{where}.instructions.{lang}: mix {self.mix} needs instruction data in "
                                  f"{get_language(lang).name} (a location for {lang})")
        for pair in self.pair_sources():
            if pair not in self.parallel:
                raise XllamaError(f"{where}.parallel.{pair}: mix {self.mix} needs {pair} sentence pairs")
        if self.mix == "custom" and not self.instructions and not self.parallel:
            raise XllamaError(f"{where}: a custom mix needs instructions or parallel data")

    def _pair_size_key(self, key: str, pairs: list[str], where: str) -> str:
        if "-" in key:
            src, tgt = parse_pair(key)
            for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
                if pair in pairs:
                    return pair
        else:
            lang = _language(key, where)
            matches = [p for p in pairs if lang in p.split("-") and lang != "en"]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise XllamaError(f"{where}: {lang} is in several pairs ({', '.join(matches)}); name the pair")
        raise XllamaError(f"{where}: no such parallel source in this mix (its pairs: {', '.join(pairs) or 'none'})")

    def _apply_allocation(self, where: str) -> None:
        """Fill parallel_sizes from a scaling allocation JSON {"allocation": {"zh": 12000, ...}}."""
        doc = read_json(self.allocation)
        alloc = doc.get("allocation") if isinstance(doc, dict) else None
        if not isinstance(alloc, dict):
            raise XllamaError(f"{where}: {self.allocation} has no 'allocation' mapping of language -> pairs")
        pairs = self.pair_sources()
        for lang, count in alloc.items():
            entry = f"{where} ({self.allocation}: allocation.{lang})"
            try:
                key = self._pair_size_key(str(lang), pairs, entry)
            except XllamaError:
                log.info("allocation for %s ignored: not a language of this mix", lang)
                continue
            if key not in self.parallel_sizes:
                self.parallel_sizes[key] = _size(count, entry)


def _choice(value, choices, where):
    if value not in choices:
        raise XllamaError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _int(value, where, minimum=None):
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise XllamaError(f"{where}: expected an integer{bound}, got {value!r}")
    return value


def _size(value, where):
    """A count (integer >= 0) or a fraction (0 < float <= 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise XllamaError(f"{where}: expected a count (integer) or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise XllamaError(f"{where}: a count must be >= 0, got {value}")
        return value
    if not 0 < value <= 1:
        raise XllamaError(f"{where}: a fraction must be in (0, 1], got {value}; write counts as integers")
    return float(value)


def _language(code, where):
    try:
        return get_language(str(code)).code
    except XllamaError as e:
        raise XllamaError(f"{where}: {e}") from None


def _mapping(value, where) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise XllamaError(f"{where}: expected a mapping, got {value!r}")
    return value


def _locations(value, where) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise XllamaError(
            f"{where}: expected a location (path or hf:owner/name[:config]) or a list of them, got {value!r}"
        )
    return [v.strip() for v in items]


# ----------------------------------------------------------------------------------------------------------
# Cleaning
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Removed:
    filtered: int = 0
    duplicates: int = 0
    contamination: int = 0

    def as_dict(self) -> dict:
        return {"contamination": self.contamination, "duplicates": self.duplicates, "filtered": self.filtered}


class _Cleaner:
    def __init__(self, spec: MixSpec, guard: ContaminationGuard | None):
        self.spec = spec
        self.report = GuardReport(guard) if guard else None

    def _contaminated(self, name: str, origin: str, *texts: str) -> bool:
        """``texts`` are normalised."""
        return self.report is not None and self.report.contaminated(name, origin, *texts)

    def instructions(self, name: str, data: InstructionData) -> tuple[list[int], _Removed]:
        removed, keep, seen = _Removed(), [], set()
        for i in range(len(data)):
            key = (normalize(data.instruction[i]), normalize(data.input[i]), normalize(data.output[i]))
            if not key[0] or not key[2]:
                removed.filtered += 1
            elif self._contaminated(name, data.origin[i], *key):
                removed.contamination += 1
            elif self.spec.dedup and hash(key) in seen:
                removed.duplicates += 1
            else:
                seen.add(hash(key))
                keep.append(i)
        return keep, removed

    def pairs(self, name: str, data: ParallelData) -> tuple[list[int], _Removed]:
        spec = self.spec
        return clean_pairs(data, name, self.report, spec.dedup, spec.min_length, spec.max_length, spec.max_length_ratio)


def clean_pairs(data: ParallelData, name: str, guard: GuardReport | None = None, dedup: bool = True,
                min_length: int = 1, max_length: int | None = None,
                max_length_ratio: float | None = None) -> tuple[list[int], _Removed]:
    """Indices of the pairs to keep, and what was removed: empty, too short/long or too unequal sides
    ("filtered", lengths in text_length units), evaluation sentences ("contamination"), repeats of a pair
    ("duplicates": compared by the hash of its normalised sides, so memory stays small)."""
    removed, keep, seen = _Removed(), [], set()
    for i in range(len(data)):
        a, b = data.source[i].strip(), data.target[i].strip()
        la, lb = text_length(a), text_length(b)
        if (
            not a
            or not b
            or min(la, lb) < min_length
            or (max_length is not None and max(la, lb) > max_length)
            or (max_length_ratio is not None and max(la, lb) > max_length_ratio * min(la, lb))
        ):
            removed.filtered += 1
            continue
        key = (normalize(a), normalize(b))
        if guard is not None and guard.contaminated(name, data.origin[i], *key):
            removed.contamination += 1
            continue
        if dedup:
            digest = hash(key)
            if digest in seen:
                removed.duplicates += 1
                continue
            seen.add(digest)
        keep.append(i)
    return keep, removed


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------


def weighted_sizes(spec: MixSpec, cleaned: dict) -> dict:
    """Each source's size: explicit (``sizes``, ``parallel_sizes``) or, with ``weights`` or ``temperature``, the
    target languages' instruction sources and pair sources each share out their total (what is available after
    cleaning) by language: p_l ~ weight_l, or p_l ~ n_l^(1/T). English instructions keep their size."""
    sizes = {**spec.sizes, **{f"{TRANSLATION}_{pair}": v for pair, v in spec.parallel_sizes.items()}}
    if spec.temperature is None and not spec.weights:
        return sizes
    for prefix in ("alpaca_", f"{TRANSLATION}_"):
        group = {name: (len(keep), lang) for name, (_, keep, lang) in cleaned.items()
                 if name.startswith(prefix) and lang != "en" and name not in sizes}
        available = {lang: n for n, lang in group.values()}
        if not available:
            continue
        weights = {lang: spec.weights[lang] for lang in available} if spec.weights else None
        counts = allocate(language_shares(available, spec.temperature or 1.0, weights), sum(available.values()))
        for name, (_, lang) in group.items():
            sizes[name] = counts[lang]
    return sizes


def _directions(spec: MixSpec, src: str, tgt: str) -> list[tuple[str, str]]:
    """The (source, target) directions a pair is used in. en-x: English is the source (for a pair without
    English, the pair's own order); x-en the reverse; both: both."""
    if "en" in (src, tgt):
        forward = ("en", tgt if src == "en" else src)
    else:
        forward = (src, tgt)
    backward = (forward[1], forward[0])
    return {"en-x": [forward], "x-en": [backward], "both": [forward, backward]}[spec.directions]


def build_mix(spec: MixSpec, progress: bool = True):
    """Load, clean, sample and shuffle the sources of ``spec``; returns (datasets.Dataset, manifest)."""
    import pyarrow as pa
    from datasets import Dataset
    from tqdm.auto import tqdm

    started = time.perf_counter()
    instruction_langs, pairs = spec.instruction_sources(), spec.pair_sources()
    guard_langs = list(dict.fromkeys([*spec.languages, *instruction_langs,
                                      *(lang for p in pairs for lang in p.split("-"))]))
    guard_locations = spec.guard if spec.guard_enabled else []
    steps = len(instruction_langs) + len(pairs) + len(guard_locations) + 1
    bar = tqdm(total=steps, desc="building mix", unit="step", disable=not progress, leave=False)
    cache: dict = {}

    guard_sets = []
    for location in guard_locations:
        bar.set_postfix_str(f"guard {location}")
        guard_sets.append(load_guard(location, guard_langs))
        bar.update()
    guard = ContaminationGuard(guard_sets) if guard_sets else None
    unused = [f"instructions.{lang}" for lang in spec.instructions if lang not in instruction_langs]
    unused += [f"parallel.{pair}" for pair in spec.parallel if pair not in pairs]
    if unused:
        log.warning("mix %s does not use %s", spec.mix, ", ".join(unused))
    cleaner = _Cleaner(spec, guard)
    checker = LanguageChecker(guard_langs, accept_mismatch=spec.accept_language_mismatch)

    columns = {c: [] for c in COLUMNS}
    sources_info, sizes_info, removed_by_source = [], {}, {}

    row_source = []  # per row: (the source's key in removed_by_source, record index): repeats share it

    def add(key, i, name, instruction, input_, output, lang, direction):
        row_source.append((key, i))
        columns["instruction"].append(instruction)
        columns["input"].append(input_)
        columns["output"].append(output)
        columns["source"].append(name)
        columns["lang"].append(lang)
        columns["direction"].append(direction)

    # 1. load, check the language, clean
    cleaned = {}  # source name -> (data, kept indices, the language it counts for in weighting)
    for lang in instruction_langs:
        name = instruction_source(lang)
        bar.set_postfix_str(name)
        data = InstructionData(lang)
        provenance = []
        for location in spec.instructions[lang]:
            part = load_instructions(location, lang, cache)
            data.extend(part)
            provenance.append(part.provenance)
        step = max(1, len(data) // LANGID_SAMPLE)
        checker.check(f"instructions.{lang}", lang, [f"{a}\n{b}" for a, b in zip(data.instruction[::step],
                                                                                data.output[::step])],
                      ", ".join(spec.instructions[lang]))
        keep, removed = cleaner.instructions(name, data)
        cleaned[name] = (data, keep, lang)
        removed_by_source[name] = removed.as_dict()
        sources_info.append({"source": name, "lang": lang, "kind": "instructions", "loaded": len(data),
                             "locations": provenance})
        bar.update()
    for pair in pairs:
        src, tgt = pair.split("-")
        name = f"{TRANSLATION}_{pair}"
        bar.set_postfix_str(name)
        data = ParallelData(src, tgt)
        provenance = []
        for location in spec.parallel[pair]:
            part = load_parallel(location, src, tgt, cache)
            data.source += part.source
            data.target += part.target
            data.origin += part.origin
            provenance.append(part.provenance)
        locations = ", ".join(spec.parallel[pair])
        checker.check(f"parallel.{pair} ({src} side)", src, data.source, locations)
        checker.check(f"parallel.{pair} ({tgt} side)", tgt, data.target, locations)
        keep, removed = cleaner.pairs(name, data)
        cleaned[name] = (data, keep, tgt if src == "en" else src)
        removed_by_source[name] = removed.as_dict()
        sources_info.append({"source": TRANSLATION, "pair": pair, "kind": "parallel", "loaded": len(data),
                             "directions": [f"{a}-{b}" for a, b in _directions(spec, src, tgt)],
                             "locations": provenance})
        bar.update()

    if spec.guard_enabled and not guard_sets:
        log.warning("no evaluation set registered (guard): nothing is checked for contamination")

    # 2. sizes (explicit, or by language weights / temperature), then draw: down- or up-sampled
    sizes, repeat = weighted_sizes(spec, cleaned), spec.upsample or spec.temperature is not None or bool(spec.weights)
    for info in sources_info:
        name = info["source"] if info["kind"] == "instructions" else f"{TRANSLATION}_{info['pair']}"
        data, keep, _ = cleaned[name]
        keep, sizes_info[name] = draw(keep, sizes.get(name), spec.seed, name, repeat=repeat)
        info["used" if info["kind"] == "instructions" else "used_pairs"] = len(keep)
        if info["kind"] == "instructions":
            lang = info["lang"]
            for i in keep:
                add(name, i, name, data.instruction[i].strip(), data.input[i].strip(), data.output[i].strip(), lang, "")
            continue
        src, tgt = info["pair"].split("-")
        for a, b in _directions(spec, src, tgt):
            lang = b if a == "en" else a if b == "en" else b  # the non-English side (the target if neither)
            sentences_a = data.source if a == src else data.target
            sentences_b = data.target if a == src else data.source
            for i in keep:
                text = sentences_a[i].strip()
                instruction = translation_instruction(a, b, key=text)
                add(name, (i, a), TRANSLATION, instruction, text, sentences_b[i].strip(), lang, f"{a}-{b}")

    # Across sources: the same (instruction, input, output) twice is one example twice.
    bar.set_postfix_str("shuffle + dataset")
    # A repeat of the same record (up-sampling) is kept.
    if spec.dedup:
        first, order = {}, []
        for i, key in enumerate(zip(columns["instruction"], columns["input"], columns["output"])):
            if first.setdefault(key, row_source[i]) != row_source[i]:
                removed_by_source[row_source[i][0]]["duplicates"] += 1
                continue
            order.append(i)
    else:
        order = list(range(len(columns["output"])))
    random.Random(spec.seed).shuffle(order)
    columns = {c: [values[i] for i in order] for c, values in columns.items()}
    n = len(order)
    if n == 0:
        totals = _sum_removed(removed_by_source)
        raise XllamaError(f"the mix is empty: no example is left after cleaning and sizing (removed: {totals})")

    dataset = Dataset(pa.table({c: pa.array(columns[c], pa.string()) for c in COLUMNS}))
    digest = content_hash(columns[c] for c in COLUMNS)  # column by column: one fast JSON dump each
    bar.update()
    bar.close()

    groups = Counter(zip(columns["source"], columns["lang"], columns["direction"]))
    from xllama import __version__

    manifest = {
        "format": MIX_FORMAT,
        "version": 1,
        "examples": n,
        "columns": list(COLUMNS),
        "by_source": dict(sorted(Counter(columns["source"]).items())),
        "by_lang": dict(sorted(Counter(columns["lang"]).items())),
        "by_direction": {k: v for k, v in sorted(Counter(columns["direction"]).items()) if k},
        "groups": [{"source": s, "lang": lang, "direction": d, "examples": c}
                   for (s, lang, d), c in sorted(groups.items())],
        "removed": _sum_removed(removed_by_source),
        "removed_by_source": removed_by_source,
        **guard_manifest(cleaner.report),
        "sizes": sizes_info,
        "seed": spec.seed,
        "content_hash": digest,
        "spec": spec.to_dict(),
        "allocation": spec.allocation,
        "unused_sources": unused,
        "sources": sources_info,
        "guard": [g.provenance for g in guard_sets],
        "language_check": checker.results,
        "xllama_version": __version__,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    return dataset, manifest


def _sum_removed(removed_by_source: dict) -> dict:
    total = Counter()
    for counts in removed_by_source.values():
        total.update(counts)
    return {"contamination": total["contamination"], "duplicates": total["duplicates"], "filtered": total["filtered"]}


# ----------------------------------------------------------------------------------------------------------
# On disk
# ----------------------------------------------------------------------------------------------------------


def is_mix(path: str | os.PathLike) -> bool:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == MIX_FORMAT
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


def write_mix(dataset, manifest: dict, out_dir: str | os.PathLike, overwrite: bool = False,
              progress: bool = True) -> Path:
    """Write the dataset (``save_to_disk``) and ``manifest.json`` atomically into ``out_dir``.

    With ``overwrite`` an existing mix is replaced; any other non-empty directory is refused, so a mistyped
    ``--out`` never deletes unrelated files.
    """
    out = Path(out_dir)
    if out.exists() and overwrite and not is_mix(out) and (not out.is_dir() or any(out.iterdir())):
        raise XllamaError(f"{out} exists and is not an xllama mix; refusing to replace it (choose another --out)")
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            _save(dataset, manifest, tmp)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return out


def _save(dataset, manifest: dict, tmp: Path) -> None:
    dataset.save_to_disk(str(tmp))
    atomic_write_json(tmp / MANIFEST, manifest)
    # temporary files are private (0700/0600); a finished mix gets the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    os.chmod(tmp / MANIFEST, 0o666 & ~umask)


def load_mix(path: str | os.PathLike):
    """(Dataset, manifest) of a mix directory written by ``write_mix`` / ``xllama data build``."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise XllamaError(f"mix directory not found: {path}")
    if not is_mix(path):
        raise XllamaError(f"{path} is not an xllama mix (no {MANIFEST} of format {MIX_FORMAT!r}); "
                          "build one with `xllama data build ... --out DIR`")
    manifest = read_json(path / MANIFEST)
    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise XllamaError(f"{path}: the mix's dataset files are missing or damaged ({e})") from None
    if tuple(dataset.column_names) != COLUMNS:
        raise XllamaError(f"{path}: expected columns {', '.join(COLUMNS)}, found {', '.join(dataset.column_names)}")
    return dataset, manifest


def mix_stats(dataset) -> dict:
    """Token-free length statistics per source: characters of prompt (instruction + input) and output, and the
    output's words (characters for unsegmented scripts such as Chinese: ``xllama.languages.length_units``)."""
    import numpy as np

    from xllama.languages import length_units

    columns = dataset.to_dict()
    by_source: dict[str, dict[str, list[int]]] = {}
    n = len(columns["output"])
    langs = columns.get("lang") or [None] * n
    directions = columns.get("direction") or [None] * n
    for source, ins, inp, out, lang, direction in zip(columns["source"], columns["instruction"], columns["input"],
                                                      columns["output"], langs, directions):
        entry = by_source.setdefault(source, {"prompt_chars": [], "output_chars": [], "output_words": []})
        entry["prompt_chars"].append(len(ins) + len(inp))
        entry["output_chars"].append(len(out))
        output_lang = direction.rsplit("-", 1)[-1] if direction else lang  # a pair's output is its target side
        entry["output_words"].append(length_units(out, output_lang))
    stats = {}
    for source, lengths in sorted(by_source.items()):
        stats[source] = {"examples": len(lengths["output_chars"])}
        for key, values in lengths.items():
            v = np.asarray(values)
            stats[source][key] = {"mean": round(float(v.mean()), 1), "median": float(np.median(v)),
                                  "p95": float(np.percentile(v, 95)), "max": int(v.max())}
    return stats
