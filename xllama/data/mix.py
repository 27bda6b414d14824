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

The build streams (issue 15): sources are read in batches and their cleaned records written to scratch Arrow
files, then drawn, de-duplicated and shuffled by index and written in batches to one Arrow file that the
returned Dataset memory-maps; memory is bounded by the batch size plus a few 8-byte arrays per row, whatever
the corpus size (``build_mix``; ``benchmarks/data/bench_large.py`` measures it).
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import mmap
import os
import random
import shutil
import tempfile
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
from xllama.data.langid import SAMPLE as LANGID_SAMPLE
from xllama.data.langid import LanguageChecker, StrideSample
from xllama.data.sample import allocate, draw, language_shares
from xllama.data.sources import (
    InstructionData,
    ParallelData,
    iter_instructions,
    iter_parallel,
    load_guard,
    text_length,
)
from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json, read_json
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
    hub_split: str = "train"  # the split read from Hub parallel corpora (hf:...)

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
        if "hub_split" in d:
            if not isinstance(d["hub_split"], str) or not d["hub_split"]:
                raise XllamaError(f"{at('hub_split')}: expected a split name (train, validation, test), "
                                  f"got {d['hub_split']!r}")
            spec.hub_split = d["hub_split"]
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
        if d.get("weights"):
            if spec.temperature is not None:
                raise XllamaError(f"{where}: give weights (fixed shares) or temperature (p ~ n^(1/T)), not both")
            spec.weights = language_weights(d["weights"], targets, at("weights"))
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
            "hub_split": self.hub_split,
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


# The recipe validators are shared with every spec parser (ALMA's stages, CPO): one check, one message per key.
from xllama.data.fields import choice as _choice  # noqa: E402
from xllama.data.fields import integer as _int  # noqa: E402
from xllama.data.fields import language as _language  # noqa: E402
from xllama.data.fields import language_weights  # noqa: E402
from xllama.data.fields import locations as _locations  # noqa: E402
from xllama.data.fields import mapping as _mapping  # noqa: E402
from xllama.data.fields import size as _size  # noqa: E402


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


def _digest(fields) -> int:
    """The duplicate key of normalised fields: an 8-byte blake2b of the fields joined by NUL, as an int. Unlike
    Python's ``hash()`` (salted per process) it is the same in every process; two different records collide
    with probability about n^2 / 2^65 (1e-6 for 5M records)."""
    return int.from_bytes(hashlib.blake2b("\0".join(fields).encode("utf-8"), digest_size=8).digest(), "little")


def _screen_instructions(data: InstructionData, name: str, report: GuardReport | None, removed: _Removed):
    """(index, instruction, input, output (stripped), digest) of the examples that pass: both instruction and
    output non-empty ("filtered"), no rule of the guard broken ("contamination"). Duplicates are left to the
    caller."""
    for i, (ins, inp, out) in enumerate(zip(data.instruction, data.input, data.output)):
        key = (normalize(ins), normalize(inp), normalize(out))
        if not key[0] or not key[2]:
            removed.filtered += 1
        elif report is not None and report.contaminated(name, data.origin[i], *key):
            removed.contamination += 1
        else:
            yield i, ins.strip(), inp.strip(), out.strip(), _digest(key)


def _screen_pairs(data: ParallelData, name: str, report: GuardReport | None, removed: _Removed, min_length: int,
                  max_length: int | None, max_length_ratio: float | None):
    """(index, source, target (stripped), digest) of the pairs that pass: no empty, too short/long or too unequal
    side ("filtered", lengths in text_length units), no rule of the guard broken ("contamination")."""
    for i, (a, b) in enumerate(zip(data.source, data.target)):
        a, b = a.strip(), b.strip()
        if not a or not b:
            removed.filtered += 1
            continue
        la, lb = text_length(a), text_length(b)
        if (
            min(la, lb) < min_length
            or (max_length is not None and max(la, lb) > max_length)
            or (max_length_ratio is not None and max(la, lb) > max_length_ratio * min(la, lb))
        ):
            removed.filtered += 1
            continue
        key = (normalize(a), normalize(b))
        if report is not None and report.contaminated(name, data.origin[i], *key):
            removed.contamination += 1
            continue
        yield i, a, b, _digest(key)


def clean_pairs(data: ParallelData, name: str, guard: GuardReport | None = None, dedup: bool = True,
                min_length: int = 1, max_length: int | None = None,
                max_length_ratio: float | None = None) -> tuple[list[int], _Removed]:
    """Indices of the pairs to keep, and what was removed: empty, too short/long or too unequal sides
    ("filtered", lengths in text_length units), evaluation sentences ("contamination"), repeats of a pair
    ("duplicates": compared by the digest of its normalised sides, so memory stays small)."""
    removed, keep, seen = _Removed(), [], set()
    for i, _, _, digest in _screen_pairs(data, name, guard, removed, min_length, max_length, max_length_ratio):
        if dedup:
            if digest in seen:
                removed.duplicates += 1
                continue
            seen.add(digest)
        keep.append(i)
    return keep, removed


def _first_occurrences(digests: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each digest, in order (what a 'seen' set keeps)."""
    _, first = np.unique(digests, return_index=True)
    return np.sort(first).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------

SCRATCH_BATCH = 4096  # rows per record batch of the scratch files
GATHER_ROWS = 65536  # rows of the shuffled mix gathered (and written) at a time, at most
GATHER_BYTES = 16 << 20  # and about this much text (fewer rows when rows are long)


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


class _ArrowFile:
    """An Arrow IPC file of one build's scratch folder: written in record batches, read back memory-mapped.

    Reading goes through a Python ``mmap`` so that the pages read can be given back (``madvise(MADV_DONTNEED)``)
    as soon as a record batch has been gathered from: the file stays in the page cache, but the build's resident
    memory does not grow with the corpus. (Without it a random gather maps nearly the whole file: the kernel
    maps up to 16 cached pages around every page touched.)"""

    def __init__(self, path: Path, columns):
        import pyarrow as pa

        self.path, self.schema = path, pa.schema([(c, pa.string()) for c in columns])
        self._writer = pa.ipc.new_file(str(path), self.schema)
        self.rows, self._map, self._batches, self._ranges, self.offsets = 0, None, None, None, None

    def write(self, columns: list[list[str]]) -> None:
        import pyarrow as pa

        if columns[0]:
            self._writer.write_batch(pa.record_batch([pa.array(c, pa.string()) for c in columns], schema=self.schema))
            self.rows += len(columns[0])

    def open(self) -> "_ArrowFile":
        import pyarrow as pa

        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        whole = pa.py_buffer(self._map)
        reader = pa.ipc.open_file(whole)
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self.offsets = np.cumsum([0] + [len(b) for b in self._batches], dtype=np.int64)
        self._ranges = []  # per batch: (first page's offset, length) of its bytes in the mapping
        for batch in self._batches:
            buffers = [b for column in batch.columns for b in column.buffers() if b is not None and b.size]
            start = min((b.address for b in buffers), default=whole.address) - whole.address
            end = max((b.address + b.size for b in buffers), default=whole.address) - whole.address
            start -= start % mmap.PAGESIZE
            self._ranges.append((start, end - start))
        _release(self._map)
        return self

    def release(self, batch: int | None = None) -> None:
        """Give back the pages of one record batch (or of the whole file)."""
        if batch is None:
            _release(self._map)
        elif hasattr(mmap, "MADV_DONTNEED") and self._ranges[batch][1] > 0:
            self._map.madvise(mmap.MADV_DONTNEED, *self._ranges[batch])

    def take(self, rows: np.ndarray) -> dict[str, list]:
        """The given rows (any order, repeats allowed) as column lists."""
        import pyarrow as pa

        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        which = np.searchsorted(self.offsets, ordered, side="right") - 1
        bounds = np.flatnonzero(np.diff(which)) + 1
        parts = []
        for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(ordered)]):
            batch = int(which[s])
            parts.append(self._batches[batch].take(pa.array(ordered[s:e] - self.offsets[batch])))  # a copy
            self.release(batch)
        table = pa.Table.from_batches(parts, schema=self.schema)
        if not np.array_equal(order, np.arange(len(order))):
            table = table.take(pa.array(np.argsort(order, kind="stable")))
        return {name: table.column(name).to_pylist() for name in self.schema.names}


def _scratch_parent(scratch_dir) -> Path:
    """Where a build's scratch folder goes: ``scratch_dir``, else $XLLAMA_CACHE/tmp, else the system's temp
    folder ($TMPDIR)."""
    if scratch_dir is not None:
        return Path(scratch_dir)
    if os.environ.get("XLLAMA_CACHE"):
        return Path(os.environ["XLLAMA_CACHE"]).expanduser() / "tmp"
    return Path(tempfile.gettempdir())


def build_mix(spec: MixSpec, progress: bool = True, scratch_dir: str | os.PathLike | None = None):
    """Load, clean, sample and shuffle the sources of ``spec``; returns (datasets.Dataset, manifest).

    Memory stays bounded whatever the corpus size: each source is streamed in batches (``iter_instructions``,
    ``iter_parallel``), cleaned, and written to a scratch Arrow file; only counts, 8-byte digests and index
    arrays stay in memory (under 100 bytes per row at the peak of the cross-source de-duplication). The rows are
    then drawn, de-duplicated across sources and shuffled by index, and written in batches to one Arrow file,
    which the returned Dataset memory-maps. Scratch files live in a temporary folder under ``scratch_dir``
    (default: $XLLAMA_CACHE/tmp or $TMPDIR) that is removed when the build ends, with or without an error; the
    returned Dataset's own file is removed when the Dataset is garbage-collected (or the process ends):
    ``write_mix`` copies it into the mix folder.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    instruction_langs, pairs = spec.instruction_sources(), spec.pair_sources()
    guard_langs = list(dict.fromkeys([*spec.languages, *instruction_langs,
                                      *(lang for p in pairs for lang in p.split("-"))]))
    guard_locations = spec.guard if spec.guard_enabled else []
    guard_sets = [load_guard(location, guard_langs) for location in guard_locations]
    guard = ContaminationGuard(guard_sets) if guard_sets else None
    unused = [f"instructions.{lang}" for lang in spec.instructions if lang not in instruction_langs]
    unused += [f"parallel.{pair}" for pair in spec.parallel if pair not in pairs]
    if unused:
        log.warning("mix %s does not use %s", spec.mix, ", ".join(unused))
    report = GuardReport(guard) if guard else None
    checker = LanguageChecker(guard_langs, accept_mismatch=spec.accept_language_mismatch)

    parent = _scratch_parent(scratch_dir)
    parent.mkdir(parents=True, exist_ok=True)
    final_dir = Path(tempfile.mkdtemp(prefix=".xllama-mix-", dir=parent))
    try:
        with tempfile.TemporaryDirectory(prefix=".xllama-scratch-", dir=parent) as scratch:
            bar = tqdm(desc="reading sources", unit=" records", disable=not progress, leave=False)
            cleaned, sources_info, removed_by_source = _read_sources(spec, Path(scratch), report, checker, bar)
            bar.close()
            if spec.guard_enabled and not guard_sets:
                log.warning("no evaluation set registered (guard): nothing is checked for contamination")
            final = final_dir / "mix.arrow"
            n, counts, sizes_info = _write_rows(spec, cleaned, sources_info, removed_by_source, Path(scratch),
                                                final, progress)
        if n == 0:
            totals = _sum_removed(removed_by_source)
            raise XllamaError(f"the mix is empty: no example is left after cleaning and sizing (removed: {totals})")
        dataset = _mapped_dataset(final)
        weakref.finalize(dataset, shutil.rmtree, str(final_dir), True)
        digest = _content_hash(final)
    except BaseException:
        shutil.rmtree(final_dir, ignore_errors=True)
        raise

    by_source, by_lang, by_direction = Counter(), Counter(), Counter()
    for (source, lang, direction), count in counts.items():
        by_source[source] += count
        by_lang[lang] += count
        by_direction[direction] += count
    return dataset, manifest(
        MIX_FORMAT, n, COLUMNS, digest, started,
        by_source=dict(sorted(by_source.items())),
        by_lang=dict(sorted(by_lang.items())),
        by_direction={k: v for k, v in sorted(by_direction.items()) if k},
        groups=[{"source": s, "lang": lang, "direction": d, "examples": c}
                for (s, lang, d), c in sorted(counts.items())],
        removed=_sum_removed(removed_by_source),
        removed_by_source=removed_by_source,
        **guard_manifest(report),
        sizes=sizes_info,
        seed=spec.seed,
        spec=spec.to_dict(),
        allocation=spec.allocation,
        unused_sources=unused,
        sources=sources_info,
        guard=[g.provenance for g in guard_sets],
        language_check=checker.results,
    )


def manifest(format: str, examples: int, columns, content_hash: str, started: float, **sections) -> dict:
    """The manifest of a data build, the one layout every build writes (mixes, monolingual corpora, and the
    task modules' text sets built from them): format, version, examples, columns, then the build's own
    sections (sources, removed, guard, language_check, sizes, seed ...), then content_hash, xllama_version and
    build_seconds (since ``started``, a ``time.perf_counter()``)."""
    from xllama import __version__

    return {"format": format, "version": 1, "examples": examples, "columns": list(columns), **sections,
            "content_hash": content_hash, "xllama_version": __version__,
            "build_seconds": round(time.perf_counter() - started, 2)}


def with_sections(manifest: dict, **sections) -> dict:
    """``manifest`` (the layout of :func:`manifest`) with ``sections`` added or replaced, still before its last
    three keys (content_hash, xllama_version, build_seconds): how a task adds what its text set means."""
    body = {k: v for k, v in manifest.items() if k not in ("content_hash", "xllama_version", "build_seconds")}
    tail = {k: manifest[k] for k in ("content_hash", "xllama_version", "build_seconds")}
    return {**body, **sections, **tail}


def _read_sources(spec: MixSpec, scratch: Path, report, checker: LanguageChecker, bar):
    """Pass 1: stream each source, check its language on an evenly spread sample, clean it and write what is
    left to a scratch Arrow file. Returns {source name: (scratch file, kept positions, weighting language)},
    the manifest's source records and the removed counts per source."""
    cleaned, sources_info, removed_by_source = {}, [], {}
    for lang in spec.instruction_sources():
        name = instruction_source(lang)
        bar.set_postfix_str(name)
        file = _ArrowFile(scratch / f"{name}.arrow", ("instruction", "input", "output"))
        removed, provenance, sample = _Removed(), [], StrideSample(LANGID_SAMPLE)

        def look(batch):
            sample.extend(len(batch), lambda j: f"{batch.instruction[j]}\n{batch.output[j]}")

        batches = _located(spec.instructions[lang], provenance,
                           lambda location, info: iter_instructions(location, lang, provenance=info))
        digests, loaded = _clean_to_scratch(file, batches, look,
                                            lambda batch: _screen_instructions(batch, name, report, removed), bar)
        checker.check(f"instructions.{lang}", lang, sample.texts, ", ".join(spec.instructions[lang]))
        cleaned[name] = (file, _dedup(spec, digests, removed), lang)
        removed_by_source[name] = removed.as_dict()
        sources_info.append({"source": name, "lang": lang, "kind": "instructions", "loaded": loaded,
                             "locations": provenance})
    for pair in spec.pair_sources():
        src, tgt = pair.split("-")
        name = f"{TRANSLATION}_{pair}"
        bar.set_postfix_str(name)
        file = _ArrowFile(scratch / f"{name}.arrow", ("source", "target"))
        removed, provenance = _Removed(), []
        samples = (StrideSample(LANGID_SAMPLE), StrideSample(LANGID_SAMPLE))

        def look(batch):
            samples[0].extend(len(batch), batch.source.__getitem__)
            samples[1].extend(len(batch), batch.target.__getitem__)

        def screen(batch):
            return _screen_pairs(batch, name, report, removed, spec.min_length, spec.max_length,
                                 spec.max_length_ratio)

        batches = _located(spec.parallel[pair], provenance,
                           lambda location, info: iter_parallel(location, src, tgt, split=spec.hub_split,
                                                                provenance=info))
        digests, loaded = _clean_to_scratch(file, batches, look, screen, bar)
        locations = ", ".join(spec.parallel[pair])
        checker.check(f"parallel.{pair} ({src} side)", src, samples[0].texts, locations)
        checker.check(f"parallel.{pair} ({tgt} side)", tgt, samples[1].texts, locations)
        cleaned[name] = (file, _dedup(spec, digests, removed), tgt if src == "en" else src)
        removed_by_source[name] = removed.as_dict()
        sources_info.append({"source": TRANSLATION, "pair": pair, "kind": "parallel", "loaded": loaded,
                             "directions": [f"{a}-{b}" for a, b in _directions(spec, src, tgt)],
                             "locations": provenance})
    return cleaned, sources_info, removed_by_source


def _located(locations: list[str], provenance: list, read):
    """The batches of every location in turn; ``read(location, info)`` fills ``info``, appended to ``provenance``."""
    for location in locations:
        provenance.append({})
        yield from read(location, provenance[-1])


def _clean_to_scratch(file: "_ArrowFile", batches, look, screen, bar) -> tuple[list[np.ndarray], int]:
    """Stream ``batches`` into ``file``: each batch is shown to ``look`` (the language-check sample), then the rows
    ``screen`` lets through, ``(index, *fields, digest)``, are written. Returns the digests (one array per batch)
    and the number of records read."""
    digests, loaded = [], 0
    for batch in batches:
        look(batch)
        rows = list(screen(batch))
        file.write([[row[k] for row in rows] for k in range(1, len(file.schema) + 1)])
        digests.append(np.array([row[-1] for row in rows], dtype=np.uint64))
        loaded += len(batch)
        bar.update(len(batch))
    return digests, loaded


def _dedup(spec: MixSpec, digests: list[np.ndarray], removed: _Removed) -> np.ndarray:
    """Positions (in the scratch file) of the records kept: the first of each digest, or all without dedup."""
    digests = np.concatenate(digests) if digests else np.zeros(0, np.uint64)
    keep = _first_occurrences(digests) if spec.dedup else np.arange(len(digests), dtype=np.int64)
    removed.duplicates += len(digests) - len(keep)
    return keep


def _write_rows(spec: MixSpec, cleaned: dict, sources_info: list, removed_by_source: dict, scratch: Path,
                final: Path, progress: bool):
    """Pass 2: size and draw each source, make its rows (a pair once per direction) into a scratch file in the
    sources' order, drop rows that repeat an earlier row of another record (the same instruction, input and
    output), shuffle, and write the rows in that order to ``final`` (Arrow, the ``datasets`` layout).
    Returns (rows, {(source, lang, direction): rows}, the sizes' accounting)."""
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    sizes, repeat = weighted_sizes(spec, cleaned), spec.upsample or spec.temperature is not None or bool(spec.weights)
    rows = _ArrowFile(scratch / "rows.arrow", ("instruction", "input", "output"))
    segments, owners = [], []  # per segment (a source in one direction): (source, lang, direction), source name
    digests, idents = [], []  # per row: digest of (instruction, input, output); (record, segment) identity
    sizes_info = {}
    for info in sources_info:
        name = info["source"] if info["kind"] == "instructions" else f"{TRANSLATION}_{info['pair']}"
        file, keep, _ = cleaned[name]
        keep, sizes_info[name] = draw(keep, sizes.get(name), spec.seed, name, repeat=repeat)
        info["used" if info["kind"] == "instructions" else "used_pairs"] = len(keep)
        file.open()
        if info["kind"] == "instructions":
            todo = [((name, info["lang"], ""), None)]
        else:
            src, tgt = info["pair"].split("-")
            todo = [((TRANSLATION, b if a == "en" else a if b == "en" else b, f"{a}-{b}"), (a, b, a == src))
                    for a, b in _directions(spec, src, tgt)]
        for label, direction in todo:
            segment = len(segments)
            segments.append(label)
            owners.append(name)
            for start in range(0, len(keep), SCRATCH_BATCH):
                chosen = keep[start:start + SCRATCH_BATCH]
                columns = file.take(chosen)
                if direction is None:
                    out = [columns["instruction"], columns["input"], columns["output"]]
                else:
                    a, b, forward = direction
                    texts, targets = (columns["source"], columns["target"]) if forward else \
                        (columns["target"], columns["source"])
                    out = [[translation_instruction(a, b, key=t) for t in texts], texts, targets]
                rows.write(out)
                digests.append(np.fromiter((_digest(r) for r in zip(*out)), dtype=np.uint64, count=len(chosen)))
                idents.append(chosen * 65536 + segment)
    digests = np.concatenate(digests) if digests else np.zeros(0, np.uint64)
    idents = np.concatenate(idents) if idents else np.zeros(0, np.int64)
    segment_of = (idents % 65536).astype(np.int32)

    # Across sources: the same (instruction, input, output) twice is one example twice; a repeat of the same
    # record (up-sampling) is kept. A row goes when its digest's first row belongs to another record.
    if spec.dedup and len(digests):
        by_digest = np.argsort(digests, kind="stable")
        ordered = digests[by_digest]
        starts = np.r_[True, ordered[1:] != ordered[:-1]]
        first_ident = idents[by_digest[starts]][np.cumsum(starts) - 1]
        dropped = np.zeros(len(digests), dtype=bool)
        dropped[by_digest] = idents[by_digest] != first_ident
        del by_digest, ordered, starts, first_ident
        for segment, count in enumerate(np.bincount(segment_of[dropped], minlength=len(segments))):
            removed_by_source[owners[segment]]["duplicates"] += int(count)
        order = np.flatnonzero(~dropped)
    else:
        order = np.arange(len(digests), dtype=np.int64)
    del digests, idents
    # The seeded shuffle: Python's random.shuffle (as before the streaming build), on an 8-byte-per-row array.
    order = array.array("q", order.astype(np.int64).tobytes())
    random.Random(spec.seed).shuffle(order)
    order = np.frombuffer(order, dtype=np.int64)

    per_segment = np.bincount(segment_of[order], minlength=len(segments))
    counts = Counter()
    for label, count in zip(segments, per_segment):
        if count:
            counts[label] += int(count)
    labels = [np.array([label[i] for label in segments] or [""], dtype=object) for i in range(3)]
    rows.open()
    features = Features({c: Value("string") for c in COLUMNS})
    bar = tqdm(total=len(order), desc="writing mix", unit=" rows", disable=not progress, leave=False)
    row_bytes = rows.path.stat().st_size // max(1, rows.rows) + 1
    step = min(GATHER_ROWS, max(SCRATCH_BATCH, GATHER_BYTES // row_bytes))
    with ArrowWriter(features=features, path=str(final)) as writer:
        for start in range(0, len(order), step):
            chosen = order[start:start + step]
            columns = rows.take(chosen)
            segment = segment_of[chosen]
            for column, values in zip(("source", "lang", "direction"), labels):
                columns[column] = values[segment].tolist()
            writer.write_batch({c: columns[c] for c in COLUMNS})
            bar.update(len(chosen))
        writer.finalize()
    bar.close()
    return len(order), counts, sizes_info


def _map_stream(path: Path):
    """(mmap, record batches) of an Arrow stream file (the ``datasets`` format), read zero-copy."""
    import pyarrow as pa

    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return mapped, list(pa.ipc.open_stream(pa.py_buffer(mapped)))


def _release(mapped) -> None:
    """Give back the pages of a read-only mapping read so far (they stay in the page cache)."""
    if hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def _mapped_dataset(path: Path):
    """A Dataset memory-mapped from ``path``, like ``Dataset.from_file``, but through a mapping whose pages
    read while opening it (pyarrow touches part of every batch) are given back."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import MemoryMappedTable

    mapped, batches = _map_stream(path)
    table = pa.Table.from_batches(batches)
    _release(mapped)
    return Dataset(MemoryMappedTable(table, str(path)))


def _content_hash(path: Path) -> str:
    """``xllama.io.content_hash`` of the mix's columns (one JSON list each, column by column), computed in
    batches from the Arrow file: the same value as hashing the whole columns at once."""
    h = hashlib.blake2b(digest_size=16)
    mapped, batches = _map_stream(path)
    for column in COLUMNS:
        h.update(b"[")
        first = True
        for batch in batches:
            if not len(batch):
                continue
            text = json.dumps(batch.column(column).to_pylist(), ensure_ascii=False)[1:-1]
            h.update(text.encode("utf-8") if first else b", " + text.encode("utf-8"))
            first = False
            _release(mapped)
        h.update(b"]\n")
    return h.hexdigest()


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
    backing = _backing_file(dataset)
    if backing:
        _save_file(dataset, backing, tmp)
    else:
        dataset.save_to_disk(str(tmp))
    atomic_write_json(tmp / MANIFEST, manifest)
    # temporary files are private (0700/0600); a finished mix gets the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    os.chmod(tmp / MANIFEST, 0o666 & ~umask)


def _backing_file(dataset) -> str | None:
    """The Arrow file that holds exactly ``dataset`` (what ``build_mix`` returns), or None (in memory,
    selected, formatted, several files...)."""
    from datasets.table import MemoryMappedTable

    table = getattr(dataset, "_data", None)
    if (isinstance(table, MemoryMappedTable) and getattr(dataset, "_indices", True) is None
            and all(replay[0] == "replace_schema_metadata" for replay in table.replays)
            and dataset.format["type"] is None and len(dataset.cache_files) == 1):
        return dataset.cache_files[0]["filename"]
    return None


def _save_file(dataset, backing: str, tmp: Path) -> None:
    """What ``Dataset.save_to_disk`` writes (one shard, ``state.json``, ``dataset_info.json``), with the data
    file copied by the kernel instead of read through memory: a multi-GB mix stays out of resident memory."""
    from dataclasses import asdict

    name = "data-00000-of-00001.arrow"
    shutil.copyfile(backing, tmp / name)
    state = {key: dataset.__dict__[key] for key in
             ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns")}
    state["_split"] = str(dataset.split) if dataset.split is not None else None
    state["_data_files"] = [{"filename": name}]
    (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = asdict(dataset._info)
    (tmp / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                           encoding="utf-8")


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
    missing = [c for c in COLUMNS if c not in dataset.column_names]  # a task may add columns (ALMA: split)
    if missing or dataset.column_names != manifest.get("columns", list(COLUMNS)):
        raise XllamaError(f"{path}: expected the columns {', '.join(manifest.get('columns', COLUMNS))} "
                          f"(including {', '.join(COLUMNS)}), found {', '.join(dataset.column_names)}")
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
