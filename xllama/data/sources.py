"""Loaders for what the mixer combines: instruction sets, parallel corpora and evaluation sets (for the guard).

Every loader takes a LOCATION: a local file, a folder of parts (read in natural order: part_2 before part_10),
or ``hf:owner/name[:config]`` for the Hugging Face Hub. Hub repos that still carry a loading script are read
through the ``json``/``parquet`` builders (see :mod:`xllama.data.hub`), never by running repo code.

One reader per format, streaming: ``iter_instructions`` and ``iter_parallel`` yield batches (column lists of
up to ``BATCH_SIZE`` records) from Moses pairs (both files read in lockstep), TSV and JSONL (line by line,
.gz allowed), parquet (pyarrow ``iter_batches``), folders of parts, and Hub datasets (iterated memory-mapped
from the ``datasets`` cache). JSON arrays are the exception: they are parsed whole (convert a corpus of
millions to JSONL). ``load_instructions`` / ``load_parallel`` collect a stream for callers that want it all.
With the columns comes provenance: which files, their size and hash, or which Hub repo/config, and for every
record where it came from (``file:line N``; an ``Origins`` sequence that keeps line numbers as ints and makes
the text on demand), so a dropped or suspicious example can be traced back to its source.

Supported Hub ids (documented in docs and HUB_SOURCES.md):

- instructions: ``hf:tatsu-lab/alpaca`` (and other script-free Alpaca-format repos: ``yahma/alpaca-cleaned``,
  ``iamshnoo/alpaca-cleaned-greek``, ``shibing624/alpaca-zh``), ``hf:MBZUAI/Bactrian-X[:lang]`` (json builder
  on ``data/{lang}.json.gz``; only the Alpaca half, ids starting ``alpaca-``).
- parallel: ``hf:sentence-transformers/parallel-sentences-wikimatrix[:en-xx]`` (fields english/non_english),
  ``hf:Helsinki-NLP/news_commentary[:ar-en|en-zh]``, ``hf:Helsinki-NLP/opus-100[:xx-yy]`` (field
  translation{xx, yy}; the config defaults to the pair's codes in alphabetical order).
- evaluation sets: ``flores101``, ``flores200`` (parquet export of gsarti/flores_101, facebook/flores),
  ``xquad``, ``mlqa``, or ``hf:owner/name:config`` of a SQuAD-format repo.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from xllama.data.hub import hub_url, load_hub_dataset, load_hub_files, parse_location
from xllama.errors import XllamaError
from xllama.io import iter_jsonl, parse_jsonl_lines, read_json
from xllama.languages import get_language

INSTRUCTION_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
PARALLEL_SUFFIXES = (".tsv", ".tsv.gz", ".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
GUARD_TEXT_SUFFIXES = (".txt", ".devtest", ".dev", ".test")

BACTRIAN_X = "MBZUAI/Bactrian-X"
WIKIMATRIX = "sentence-transformers/parallel-sentences-wikimatrix"

# Sentence ends: Latin/Greek/Cyrillic punctuation followed by space, CJK full stops, Hindi danda, Arabic '?'.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?؟।])\s+|(?<=[。！？])\s*|\n+")
# Characters that carry about three Latin letters' worth of content each (CJK, kana, Hangul, full-width forms).
_WIDE = re.compile(r"[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002fa1f]")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (rough, punctuation-based; good enough to find copied evaluation sentences)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def text_length(text: str) -> int:
    """Length in Latin-character equivalents: CJK/kana/Hangul characters count 3, so length ratios between
    Chinese and English are near 1 like those between German and English."""
    return len(text) + 2 * len(_WIDE.findall(text))


def natural_key(path: Path) -> list:
    """Sort key so that part_2 comes before part_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _suffix(path: Path) -> str:
    """'.json', '.jsonl.gz', ... (the last one or two suffixes, lower case)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def file_info(path: Path) -> dict:
    """Provenance of one file: absolute path, size and content hash."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "blake2b": h.hexdigest()}


def _hub_info(repo: str, config: str | None, path_or_split: str, rows: int, **extra) -> dict:
    return {"hub": repo, "config": config, "file_or_split": path_or_split, "rows": rows, **extra}


def _existing(location: str) -> Path:
    path = Path(location).expanduser()
    if not path.exists():
        raise XllamaError(f"file not found: {location}")
    return path


def _part_files(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and _suffix(p) in suffixes), key=natural_key)
    if not files:
        raise XllamaError(f"no {what} files ({', '.join(suffixes)}) in folder {folder}")
    return files


def _unknown_format(path: Path, suffixes: tuple[str, ...], what: str) -> XllamaError:
    return XllamaError(
        f"unknown format for {what} file {path} (suffix {_suffix(path) or 'none'!r}); expected one of "
        f"{', '.join(suffixes)}, or a folder of such files"
    )


# ----------------------------------------------------------------------------------------------------------
# Reading records (JSON arrays, JSONL, parquet), with record/line numbers for error messages
# ----------------------------------------------------------------------------------------------------------

BATCH_SIZE = 10_000  # records per batch of the streaming readers
BATCH_BYTES = 64 << 20  # and at most about this much text per batch of the line readers (Moses, TSV)


class Origins:
    """Where each record came from (``FILE:line N``, ``hf:...:row N``), kept as runs of numbers and turned into
    text only when asked for, so a corpus of millions of records costs about 8 bytes a record here, not a string.

    A sequence: ``len``, ``origins[i]``, iteration, and ``+=`` (another Origins, or any iterable of strings).
    """

    def __init__(self):
        self._runs: list[tuple[str | None, object]] = []  # (prefix, numbers) or (None, list of strings)
        self._ends: list[int] = []  # cumulative lengths

    def add(self, prefix: str | None, numbers) -> None:
        """Append records numbered ``numbers`` (a range or an int array) whose origin is ``prefix + number``."""
        if len(numbers):
            self._runs.append((prefix, numbers))
            self._ends.append(len(self) + len(numbers))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> str:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"Origins indices must be integers, not {type(i).__name__}")
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"origin {i} out of range ({n} records)")
        run = bisect.bisect_right(self._ends, i)
        prefix, numbers = self._runs[run]
        value = numbers[i - (self._ends[run - 1] if run else 0)]
        return value if prefix is None else f"{prefix}{value}"

    def __iter__(self):
        for prefix, numbers in self._runs:
            if prefix is None:
                yield from numbers
            else:
                for value in numbers:
                    yield f"{prefix}{value}"

    def __iadd__(self, other) -> "Origins":
        if isinstance(other, Origins):
            for prefix, numbers in other._runs:
                self.add(prefix, numbers)
        else:
            self.add(None, list(other))
        return self

    def __repr__(self) -> str:
        return f"Origins({len(self)} records)"


def iter_records(path: Path) -> Iterator[tuple[str, int, dict]]:
    """The records of a JSONL / JSON array / parquet file as (kind, number, record), kind 'line', 'record' or
    'row'. JSONL is streamed line by line and parquet in batches (pyarrow ``iter_batches``); a JSON array is
    parsed whole (JSON has no streaming parser in the standard library: convert big corpora to JSONL)."""
    suffix = _suffix(path)
    if suffix == ".jsonl":
        for n, record in iter_jsonl(path):
            yield "line", n, record
    elif suffix == ".jsonl.gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, record in parse_jsonl_lines(path, f):
                yield "line", n, record
    elif suffix in (".json", ".json.gz"):
        yield from _json_records(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_SIZE):
            for record in batch.to_pylist():
                n += 1
                yield "row", n, record
    else:
        raise XllamaError(f"cannot read records from {path}")


def read_records(path: Path, cache: dict | None = None) -> tuple[list[tuple[str, dict]], str]:
    """Records of a JSON array / JSONL / parquet file as (label, record) with label 'line N' or 'record N'."""
    key = str(path.resolve())
    if cache is not None and key in cache:
        return cache[key]
    result = ([(f"{kind} {n}", r) for kind, n, r in _cached_records(path, cache)], _suffix(path))
    if cache is not None:
        cache[key] = result
    return result


def _cached_records(path: Path, cache: dict | None):
    """``iter_records(path)``, collected once per ``cache`` (a bilingual file read for two languages)."""
    if cache is None:
        return iter_records(path)
    key = ("records", str(path.resolve()))
    if key not in cache:
        cache[key] = list(iter_records(path))
    return cache[key]


def _json_records(path: Path) -> list[tuple[str, int, dict]]:
    """A JSON array of objects; a '.json' file that is really JSON Lines (common on the Hub) is read as such."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    else:
        if not path.is_file():
            raise XllamaError(f"file not found: {path}")
        text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return [("line", n, r) for n, r in parse_jsonl_lines(path, text.split("\n"))]
        raise XllamaError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(doc, list):
        raise XllamaError(f"{path}: expected a JSON array of records, got a JSON {type(doc).__name__}")
    records = []
    for n, r in enumerate(doc, 1):
        if not isinstance(r, dict):
            raise XllamaError(f"{path}: record {n}: expected a JSON object, got {type(r).__name__}")
        records.append(("record", n, r))
    return records


def _iter_binary_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file (.gz allowed), streamed; lines end at '\\n' only (a stray '\\r' or
    Unicode line separator inside a sentence does not split it), trailing '\\r' removed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            yield n, _decode(raw, path, n)


def _decode(raw: bytes, path: Path, n: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XllamaError(f"{path}: line {n}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return (text[:-1] if text.endswith("\n") else text).rstrip("\r")


def _text(value, where: str, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise XllamaError(f"{where}: field {key!r} should be a string, got {type(value).__name__}")


def _string(value, where, key: str) -> str:
    """``value`` as a field's text: a str as is, None as ''; ``where()`` (called only on error) names the record."""
    if type(value) is str:  # noqa: E721 - the fast path
        return value
    return _text(value, where(), key)


# ----------------------------------------------------------------------------------------------------------
# Instruction data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class InstructionData:
    """Instruction examples of one language, as columns; ``origin[i]`` says where example i came from."""

    lang: str
    instruction: list[str] = field(default_factory=list)
    input: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    origin: Origins = field(default_factory=Origins)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.output)

    def extend(self, other: "InstructionData") -> None:
        self.instruction += other.instruction
        self.input += other.input
        self.output += other.output
        self.origin += other.origin


def instruction_schema(keys, lang: str, where: str) -> tuple[str, str | None, str, str]:
    """Which fields hold (instruction, input, output) for ``lang``, and the schema's name.

    Recognised: Alpaca ``{instruction, input, output}``; bilingual records with language-prefixed fields
    (``en_instruction``, ``zh_output``, ...: the requested language's side); ``{prompt, response}``.
    """
    keys = set(keys)
    if f"{lang}_instruction" in keys and f"{lang}_output" in keys:
        return f"{lang}_instruction", f"{lang}_input", f"{lang}_output", "bilingual"
    prefixed = sorted({k[: -len("_instruction")] for k in keys if k.endswith("_instruction") and k != "instruction"})
    if prefixed:
        raise XllamaError(
            f"{where}: bilingual records have instructions in {', '.join(prefixed)} but not in {lang} "
            f"(no field {lang}_instruction)"
        )
    if "instruction" in keys and "output" in keys:
        return "instruction", "input", "output", "alpaca"
    if "prompt" in keys and "response" in keys:
        return "prompt", None, "response", "prompt-response"
    raise XllamaError(
        f"{where}: unknown instruction record format with fields {sorted(keys)}; expected "
        f"{{instruction, input, output}}, {{{lang}_instruction, {lang}_input, {lang}_output}} or {{prompt, response}}"
    )


def _instruction_batches(items, lang: str, path: Path, batch_size: int, schemas: set) -> Iterator[InstructionData]:
    """Batches of instruction examples from (kind, number, record) items of one file."""
    fields_ = None
    batch, numbers, kind = InstructionData(lang), [], "record"
    for kind, n, r in items:
        where = lambda: f"{path}: {kind} {n}"  # noqa: E731 - built only for an error message
        if fields_ is None:
            *fields_, schema = instruction_schema(r.keys(), lang, where())
            schemas.add(schema)
            ki, kin, ko = fields_
        try:
            ins, out = r[ki], r[ko]
        except KeyError as e:
            raise XllamaError(f"{where()}: missing field {e.args[0]!r} (the file's first record has it)") from None
        batch.instruction.append(_string(ins, where, ki))
        batch.input.append(_string(r.get(kin), where, kin) if kin else "")
        batch.output.append(_string(out, where, ko))
        numbers.append(n)
        if len(numbers) == batch_size:
            batch.origin.add(f"{path}:{kind} ", np.array(numbers, dtype=np.int64))
            yield batch
            batch, numbers = InstructionData(lang), []
    if numbers:
        batch.origin.add(f"{path}:{kind} ", np.array(numbers, dtype=np.int64))
        yield batch


def _instructions_from_columns(ds, lang: str, where: str, origin_prefix: str, batch_size: int,
                               provenance: dict) -> Iterator[InstructionData]:
    """Batches of instruction examples of a (memory-mapped) ``datasets.Dataset``."""
    ki, kin, ko, schema = instruction_schema(ds.column_names, lang, where)
    provenance["schema"] = schema
    text = lambda values: ["" if v is None else str(v) for v in values]  # noqa: E731
    start = 1
    for columns in ds.iter(batch_size=batch_size):
        batch = InstructionData(lang, text(columns[ki]), [], text(columns[ko]))
        batch.input = text(columns[kin]) if kin in columns else [""] * len(batch.output)
        batch.origin.add(f"{origin_prefix}:row ", range(start, start + len(batch)))
        start += len(batch)
        yield batch


def iter_instructions(location: str, lang: str, cache: dict | None = None, batch_size: int | None = None,
                      provenance: dict | None = None) -> Iterator[InstructionData]:
    """Instruction examples in ``lang`` from a file, a folder of parts, or ``hf:owner/name[:config]``, streamed
    in batches (``InstructionData`` of up to ``batch_size`` examples). ``provenance`` (a dict, if given) is
    filled in; it is complete once the stream is exhausted. No examples at all is an error."""
    lang = get_language(lang).code
    provenance = {} if provenance is None else provenance
    batch_size, count = batch_size or BATCH_SIZE, 0
    hub = parse_location(location)
    if hub:
        batches = _hub_instruction_batches(hub[0], hub[1], lang, batch_size, provenance)
    else:
        batches = _file_instruction_batches(location, lang, cache, batch_size, provenance)
    for batch in batches:
        count += len(batch)
        yield batch
    provenance.update(lang=lang, records=count)
    if not count:
        raise XllamaError(f"no instruction records in {location}")


def _file_instruction_batches(location: str, lang: str, cache, batch_size: int, provenance: dict):
    path = _existing(location)
    files = _part_files(path, INSTRUCTION_SUFFIXES, "instruction") if path.is_dir() else [path]
    infos, schemas = [], set()
    provenance.update(location=location, files=infos, schema="")
    for f in files:
        if _suffix(f) not in INSTRUCTION_SUFFIXES:
            raise _unknown_format(f, INSTRUCTION_SUFFIXES, "instruction")
        yield from _instruction_batches(_cached_records(f, cache), lang, f, batch_size, schemas)
        infos.append(_cached_file_info(f, cache))
    provenance["schema"] = ",".join(sorted(schemas))


def load_instructions(location: str, lang: str, cache: dict | None = None) -> InstructionData:
    """Instruction examples in ``lang`` from a file, a folder of parts, or ``hf:owner/name[:config]``
    (``iter_instructions``, collected)."""
    data = InstructionData(get_language(lang).code)
    for batch in iter_instructions(location, lang, cache, provenance=data.provenance):
        data.extend(batch)
    return data


def _cached_file_info(path: Path, cache: dict | None) -> dict:
    key = ("info", str(path.resolve()))
    if cache is not None and key in cache:
        return cache[key]
    info = file_info(path)
    if cache is not None:
        cache[key] = info
    return info


def _hub_instruction_batches(repo: str, config: str | None, lang: str, batch_size: int, provenance: dict):
    """A Hub dataset is read into the ``datasets`` cache (Arrow on disk) and iterated memory-mapped."""
    location = f"hf:{repo}" + (f":{config}" if config else "")
    if repo == BACTRIAN_X:
        # A script repo: read its gzipped JSON directly. 67,017 records = Alpaca + Dolly; keep the Alpaca half.
        code = config or lang
        path = f"data/{code}.json.gz"
        ds = load_hub_files("json", repo, path)
        if "id" not in ds.column_names:
            raise XllamaError(f"{location}: expected an 'id' field in {path} (got {ds.column_names})")
        ds = ds.filter(lambda ids: [str(i).startswith("alpaca-") for i in ids], input_columns="id", batched=True)
        provenance.update(_hub_info(repo, config, path, len(ds), url=hub_url(repo, path), kept="ids alpaca-*"))
        prefix = f"{location}/{path}"
    else:
        ds = load_hub_dataset(repo, config, "train")
        provenance.update(_hub_info(repo, config, "train", len(ds), fingerprint=getattr(ds, "_fingerprint", None)))
        prefix = location
    provenance["location"] = location
    yield from _instructions_from_columns(ds, lang, location, prefix, batch_size, {})


# ----------------------------------------------------------------------------------------------------------
# Parallel data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ParallelData:
    """Aligned sentence pairs: ``source[i]`` (in ``src``) translates to ``target[i]`` (in ``tgt``)."""

    src: str
    tgt: str
    source: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    origin: Origins = field(default_factory=Origins)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source)

    def extend(self, other: "ParallelData") -> None:
        self.source += other.source
        self.target += other.target
        self.origin += other.origin


def _read_lines(path: Path) -> list[str]:
    return [line for _, line in _iter_binary_lines(path)]


def _moses_batches(src_path: Path, tgt_path: Path, src: str, tgt: str, batch_size: int) -> Iterator[ParallelData]:
    """Two line-aligned files read in lockstep; different line counts name both files and both counts (found
    when the shorter file ends)."""
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise XllamaError(f"file not found: {path}")
    opener = lambda p: gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")  # noqa: E731
    with opener(src_path) as fa, opener(tgt_path) as fb:
        batch, n, start, size = ParallelData(src, tgt), 0, 1, 0
        for a, b in itertools.zip_longest(fa, fb):
            if a is None or b is None:
                count_a = n + (a is not None) + sum(1 for _ in fa)
                count_b = n + (b is not None) + sum(1 for _ in fb)
                raise XllamaError(f"parallel files differ in length: {src_path} has {count_a} lines, "
                                  f"{tgt_path} has {count_b}")
            n += 1
            batch.source.append(_decode(a, src_path, n))
            batch.target.append(_decode(b, tgt_path, n))
            size += len(a) + len(b)
            if len(batch.source) == batch_size or size > BATCH_BYTES:
                batch.origin.add(f"{src_path}:line ", range(start, n + 1))
                yield batch
                batch, start, size = ParallelData(src, tgt), n + 1, 0
        if batch.source:
            batch.origin.add(f"{src_path}:line ", range(start, n + 1))
            yield batch


def load_aligned_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Two line-aligned files; different line counts name both files and both counts."""
    data = ParallelData("", "")
    for batch in _moses_batches(src_path, tgt_path, "", "", BATCH_SIZE):
        data.extend(batch)
    return data.source, data.target


def moses_files(path: Path, src: str, tgt: str) -> tuple[Path, Path] | None:
    """The Moses-style pair (PREFIX.src, PREFIX.tgt) named by ``path``: a folder (``train.*`` preferred),
    a prefix such as ``zhen/train.zh-en``, or one of the two files; None when ``path`` is none of these."""
    if path.is_dir():
        names = [p.name for p in sorted(path.iterdir()) if p.is_file()]
        prefixes = [n[: -len(src) - 1] for n in names if n.endswith(f".{src}")]
        prefixes = [p for p in prefixes if (path / f"{p}.{tgt}").is_file()]
        if not prefixes:
            return None
        train = [p for p in prefixes if p.startswith("train")] or prefixes
        if len(train) > 1:
            raise XllamaError(
                f"{path} holds several {src}/{tgt} file pairs ({', '.join(train)}); pass one prefix, "
                f"e.g. {path / train[0]}"
            )
        return path / f"{train[0]}.{src}", path / f"{train[0]}.{tgt}"
    if path.is_file():
        for mine, other in ((src, tgt), (tgt, src)):
            if path.name.endswith(f".{mine}"):
                sibling = path.with_name(path.name[: -len(mine)] + other)
                if sibling.is_file():
                    return (path, sibling) if mine == src else (sibling, path)
        return None
    a, b = Path(f"{path}.{src}"), Path(f"{path}.{tgt}")
    if a.is_file() and b.is_file():
        return a, b
    if a.is_file() or b.is_file():
        missing = b if a.is_file() else a
        raise XllamaError(f"file not found: {missing} (the other side of the parallel prefix {path})")
    return None


def _pair_schema(keys, src: str, tgt: str, where: str) -> str:
    keys = set(keys)
    if "translation" in keys:
        return "translation"
    if src in keys and tgt in keys:
        return "columns"
    if {"english", "non_english"} <= keys and "en" in (src, tgt):
        return "english/non_english"
    raise XllamaError(
        f"{where}: unknown parallel record format with fields {sorted(keys)}; expected "
        f"{{'translation': {{'{src}': ..., '{tgt}': ...}}}}, {{'{src}': ..., '{tgt}': ...}} or {{english, non_english}}"
    )


def _pair_getter(schema: str, src: str, tgt: str):
    if schema == "translation":
        return lambda r: (r["translation"][src], r["translation"][tgt])
    if schema == "columns":
        return lambda r: (r[src], r[tgt])
    if src == "en":
        return lambda r: (r["english"], r["non_english"])
    return lambda r: (r["non_english"], r["english"])


def _pair_batches(items, src: str, tgt: str, path: Path, batch_size: int) -> Iterator[ParallelData]:
    """Batches of pairs from (kind, number, record) items of one file."""
    get, schema = None, None
    batch, numbers, kind = ParallelData(src, tgt), [], "record"
    for kind, n, r in items:
        where = lambda: f"{path}: {kind} {n}"  # noqa: E731 - built only for an error message
        if get is None:
            schema = _pair_schema(r.keys(), src, tgt, where())
            get = _pair_getter(schema, src, tgt)
        try:
            a, b = get(r)
        except (KeyError, TypeError):
            raise XllamaError(
                f"{where()}: expected a {src}/{tgt} pair in the {schema} layout, got {r!r:.200}") from None
        batch.source.append(_string(a, where, src))
        batch.target.append(_string(b, where, tgt))
        numbers.append(n)
        if len(numbers) == batch_size:
            batch.origin.add(f"{path}:{kind} ", np.array(numbers, dtype=np.int64))
            yield batch
            batch, numbers = ParallelData(src, tgt), []
    if numbers:
        batch.origin.add(f"{path}:{kind} ", np.array(numbers, dtype=np.int64))
        yield batch


def _tsv_batches(path: Path, src: str, tgt: str, batch_size: int) -> Iterator[ParallelData]:
    """TSV with two columns in the pair's order, a header naming the languages (any order), or WikiMatrix's
    three columns (score, source, target); streamed, blank lines skipped."""
    order, start = (0, 1), 0
    batch, numbers, size = ParallelData(src, tgt), [], 0
    for n, line in _iter_binary_lines(path):
        if n == 1:
            head = [c.strip().lower() for c in line.split("\t")]
            if src in head and tgt in head:
                order, start = (head.index(src), head.index(tgt)), 1
                continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3 and _is_number(cols[0]) and start == 0:
            cols = cols[1:]
        if len(cols) <= max(order):
            raise XllamaError(f"{path}: line {n}: expected {max(order) + 1} tab-separated columns, got {len(cols)}")
        batch.source.append(cols[order[0]])
        batch.target.append(cols[order[1]])
        numbers.append(n)
        size += len(line)
        if len(numbers) == batch_size or size > BATCH_BYTES:
            batch.origin.add(f"{path}:line ", np.array(numbers, dtype=np.int64))
            yield batch
            batch, numbers, size = ParallelData(src, tgt), [], 0
    if numbers:
        batch.origin.add(f"{path}:line ", np.array(numbers, dtype=np.int64))
        yield batch


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def iter_parallel(location: str, src: str, tgt: str, cache: dict | None = None, split: str = "train",
                  batch_size: int | None = None, provenance: dict | None = None) -> Iterator[ParallelData]:
    """Sentence pairs src->tgt, streamed in batches (``ParallelData`` of up to ``batch_size`` pairs), from Moses
    files (folder, prefix or one of the files; read in lockstep), TSV, JSON/JSONL/parquet ``{"translation":
    {src, tgt}}`` records (one file or a folder of parts), or a Hub corpus (its ``split``, memory-mapped from
    the ``datasets`` cache). ``provenance`` (a dict, if given) is complete once the stream is exhausted. No pairs
    at all is an error."""
    src, tgt = get_language(src).code, get_language(tgt).code
    provenance = {} if provenance is None else provenance
    batch_size, count = batch_size or BATCH_SIZE, 0
    hub = parse_location(location)
    if hub:
        batches = _hub_parallel_batches(location, hub[0], hub[1], src, tgt, split, batch_size, provenance)
    else:
        batches = _file_parallel_batches(location, src, tgt, cache, batch_size, provenance)
    for batch in batches:
        count += len(batch)
        yield batch
    provenance.update(pair=f"{src}-{tgt}", pairs=count)
    if not count:
        raise XllamaError(f"no {src}-{tgt} sentence pairs in {location}")


def _file_parallel_batches(location: str, src: str, tgt: str, cache, batch_size: int, provenance: dict):
    path = Path(location).expanduser()
    pair = moses_files(path, src, tgt)
    if pair:
        provenance.update(location=location, format="moses", files=[file_info(p) for p in pair])
        yield from _moses_batches(*pair, src, tgt, batch_size)
        return
    path = _existing(location)
    files = _part_files(path, PARALLEL_SUFFIXES, f"{src}-{tgt} parallel") if path.is_dir() else [path]
    infos = []
    provenance.update(location=location, format="records", files=infos)
    for f in files:
        suffix = _suffix(f)
        if suffix in (".tsv", ".tsv.gz"):
            yield from _tsv_batches(f, src, tgt, batch_size)
        elif suffix in PARALLEL_SUFFIXES:
            yield from _pair_batches(_cached_records(f, cache), src, tgt, f, batch_size)
        else:
            raise _unknown_format(f, PARALLEL_SUFFIXES + (f"PREFIX.{src} + PREFIX.{tgt}",), "parallel")
    infos += [file_info(f) for f in files]


def load_parallel(location: str, src: str, tgt: str, cache: dict | None = None, split: str = "train") -> ParallelData:
    """Sentence pairs src->tgt from one location (``iter_parallel``, collected)."""
    data = ParallelData(get_language(src).code, get_language(tgt).code)
    for batch in iter_parallel(location, src, tgt, cache, split, provenance=data.provenance):
        data.extend(batch)
    return data


def default_hub_config(repo: str, src: str, tgt: str) -> str:
    """WikiMatrix configs are 'en-xx'; NewsCommentary and OPUS-100 name pairs in alphabetical order."""
    if repo == WIKIMATRIX:
        other = tgt if src == "en" else src
        return f"en-{other}"
    return "-".join(sorted((src, tgt)))


def _hub_parallel_batches(location: str, repo: str, config: str | None, src: str, tgt: str, split: str,
                          batch_size: int, provenance: dict) -> Iterator[ParallelData]:
    """A Hub corpus is read into the ``datasets`` cache (Arrow on disk) and iterated memory-mapped."""
    config = config or default_hub_config(repo, src, tgt)
    ds = load_hub_dataset(repo, config, split)
    where = f"hf:{repo}:{config}" + ("" if split == "train" else f" ({split})")
    schema = _pair_schema(ds.column_names, src, tgt, where)
    provenance.update(_hub_info(repo, config, split, len(ds), fingerprint=getattr(ds, "_fingerprint", None)))
    provenance["location"] = location
    text = lambda values: ["" if s is None else str(s) for s in values]  # noqa: E731
    start = 1
    for columns in ds.iter(batch_size=batch_size):
        batch = ParallelData(src, tgt)
        if schema == "translation":
            pairs = columns["translation"]
            try:
                batch.source, batch.target = text(p[src] for p in pairs), text(p[tgt] for p in pairs)
            except (KeyError, TypeError):
                first = repr(pairs[0])[:200]
                raise XllamaError(f"{where}: 'translation' records lack {src!r} or {tgt!r} (first: {first})") from None
        elif schema == "columns":
            batch.source, batch.target = text(columns[src]), text(columns[tgt])
        else:
            en, other = text(columns["english"]), text(columns["non_english"])
            batch.source, batch.target = (en, other) if src == "en" else (other, en)
        batch.origin.add(f"{where}:row ", range(start, start + len(batch)))
        start += len(batch)
        yield batch


# ----------------------------------------------------------------------------------------------------------
# Monolingual documents (ALMA stage 1)
# ----------------------------------------------------------------------------------------------------------


def iter_lines(path: Path):
    """The lines of a text file (.gz allowed), streamed, without their line ends."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n").rstrip("\r")


def iter_documents(location: str, lang: str, text_field: str = "text", max_documents: int | None = None,
                   max_chars: int | None = None, provenance: dict | None = None, batch: int = 2000):
    """Non-empty documents of one location, streamed in lists of up to ``batch``. Local files: plain text (one
    document per line, .gz allowed), JSON/JSONL/parquet records with ``text_field``, or a folder of such files.
    ``hf:`` locations (``hf:owner/name[:config]`` or ``hf:owner/name/GLOB``) are streamed. Reading stops at
    ``max_documents`` or once ``max_chars`` characters are read. ``provenance`` (a dict) is filled in as the
    stream goes and is complete when it ends."""
    import math

    limit, char_limit = max_documents or math.inf, max_chars or math.inf
    info = provenance if provenance is not None else {}
    info.update(location=location, documents=0, chars=0)
    docs: list[str] = []

    def texts():  # (text, where) pairs, in order
        if location.startswith("hf:"):
            from xllama.data.hub import stream_hub

            stream, hub_info = stream_hub(location)
            info.update(hub_info)
            for n, record in enumerate(stream, 1):
                yield _document_text(record, text_field, f"{location}: row {n}"), location
            return
        path = Path(location).expanduser()
        if not path.exists():
            raise XllamaError(f"monolingual {lang} text not found: {location}")
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key) \
            if path.is_dir() else [path]
        if not files:
            raise XllamaError(f"no files in monolingual {lang} folder {path}")
        info["files"] = []
        for f in files:
            info["files"].append(file_info(f))
            if _suffix(f) in INSTRUCTION_SUFFIXES:
                for kind, n, record in iter_records(f):
                    yield _document_text(record, text_field, f"{f}: {kind} {n}"), str(f)
            else:
                for line in iter_lines(f):
                    yield line, str(f)

    for text, where in texts():
        if text is None:
            continue
        if not isinstance(text, str):
            raise XllamaError(f"{where}: field {text_field!r} should be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            continue
        docs.append(text)
        info["documents"] += 1
        info["chars"] += len(text)
        if len(docs) >= batch:
            yield docs
            docs = []
        if info["documents"] >= limit or info["chars"] >= char_limit:
            break
    if docs:
        yield docs


def _document_text(record: dict, text_field: str, where: str):
    if text_field not in record:
        raise XllamaError(f"{where} has no field {text_field!r} (fields: {sorted(record)}); set data.text_field")
    return record[text_field]


def load_documents(location: str, lang: str, text_field: str = "text", max_documents: int | None = None,
                   max_chars: int | None = None) -> tuple[list[str], dict]:
    """Documents of one location -> (non-empty documents, provenance): :func:`iter_documents`, collected."""
    provenance: dict = {}
    docs = [doc for part in iter_documents(location, lang, text_field, max_documents, max_chars, provenance)
            for doc in part]
    return docs, provenance


# ----------------------------------------------------------------------------------------------------------
# Evaluation sets, for the contamination guard
# ----------------------------------------------------------------------------------------------------------

NAMED_FLORES = ("flores101", "flores200")
NAMED_QA = ("xquad", "mlqa")


@dataclass
class GuardData:
    """The texts of one registered evaluation set (sentences, questions, contexts)."""

    location: str
    kind: str  # flores | squad | wmt | text
    texts: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


def _squad_texts(examples) -> list[str]:
    """Contexts (the guard also registers their sentences) and questions. Answers are left out: they are
    spans of the (registered) context, and alone they are names and dates ("The Amazon rainforest") whose
    presence in an Alpaca input is no leak of the test."""
    texts, contexts = [], set()
    for ex in examples:
        if ex.context not in contexts:
            contexts.add(ex.context)
            texts.append(ex.context)
        texts.append(ex.question)
    return texts


def load_guard(location: str, languages: list[str]) -> GuardData:
    """An evaluation set's texts in ``languages`` (English is always added): FLORES folders or names, SQuAD
    JSON files/folders (XQuAD), WMT/ALMA JSON or JSONL, or plain text with one sentence per line.

    For SQuAD-format sets the texts are each context and each question (not the answers, see _squad_texts);
    the guard (:class:`xllama.data.mix.ContaminationGuard`) registers them and the contexts' sentences,
    skipping very short strings that would remove unrelated training examples.
    """
    from xllama.data.evalsets import load_flores, load_squad, load_wmt_json

    langs = list(dict.fromkeys(["en", *(get_language(lang).code for lang in languages)]))
    found: dict[str, int] = {}

    def per_language(loader, kind: str) -> GuardData:
        guard = GuardData(location, kind)
        errors = []
        for lang in langs:
            try:
                texts = loader(lang)
            except XllamaError as e:
                errors.append(str(e))
                continue
            found[lang] = len(texts)
            guard.texts.extend(texts)
        if not found:
            raise XllamaError(f"evaluation set {location}: nothing found for {', '.join(langs)} ({errors[0]})")
        return guard

    if location in NAMED_FLORES:
        guard = per_language(lambda lang: load_flores(location, lang), "flores")
    elif location in NAMED_QA:
        guard = per_language(lambda lang: _squad_texts(load_squad(location, lang)), "squad")
    elif parse_location(location):
        guard = GuardData(location, "squad", _squad_texts(load_squad(location)))
    else:
        path = _existing(location)
        if path.is_dir():
            if any(path.glob("*.devtest")) or (path / "devtest").is_dir():
                guard = per_language(lambda lang: load_flores(str(path), lang, "devtest"), "flores")
            elif any(path.glob("*.dev")):
                guard = per_language(lambda lang: load_flores(str(path), lang, "dev"), "flores")
            elif any(path.glob("*.json")):
                guard = per_language(lambda lang: _squad_texts(load_squad(str(path), lang)), "squad")
            else:
                raise XllamaError(
                    f"unknown evaluation-set folder {path}: expected FLORES files (<code>.devtest or devtest/) "
                    "or SQuAD files (<name>.<lang>.json)"
                )
            guard.provenance["files"] = [file_info(p) for p in _language_files(path, found)]
        else:
            suffix = _suffix(path)
            if suffix in (".json", ".jsonl"):
                doc = read_json(path) if suffix == ".json" else None
                if isinstance(doc, dict) and "data" in doc:
                    guard = GuardData(location, "squad", _squad_texts(load_squad(str(path))))
                else:
                    records = doc if doc is not None else [r for _, r in iter_jsonl(path)]
                    first = records[0].get("translation") if records and isinstance(records[0], dict) else None
                    if not isinstance(first, dict) or len(first) < 2:
                        raise XllamaError(
                            f"{path}: unknown evaluation-set JSON: expected SQuAD ({{'data': [...]}}) or WMT records "
                            "({'translation': {xx: ..., yy: ...}})"
                        )
                    a, b = list(first)[:2]
                    sources, targets = load_wmt_json(path, a, b)
                    guard = GuardData(location, "wmt", sources + targets)
            elif suffix in GUARD_TEXT_SUFFIXES or suffix.lstrip(".") in _language_codes():
                guard = GuardData(location, "text", [line for line in _read_lines(path) if line.strip()])
            else:
                raise XllamaError(
                    f"unknown format for evaluation set {path}: expected a FLORES or SQuAD folder, SQuAD/WMT .json, "
                    f"WMT .jsonl or plain text ({', '.join(GUARD_TEXT_SUFFIXES)})"
                )
            guard.provenance["files"] = [file_info(path)]
    guard.provenance.update(location=location, kind=guard.kind, texts=len(guard.texts))
    if found:
        guard.provenance["languages"] = found
    if not guard.texts:
        raise XllamaError(f"evaluation set {location} is empty")
    return guard


def _language_files(folder: Path, langs) -> list[Path]:
    """The files of an evaluation folder that belong to ``langs`` (eng.devtest, zho_Hans.devtest, xquad.zh.json)."""
    codes = set()
    for lang in langs:
        language = get_language(lang)
        codes |= {language.flores101, language.flores200, language.code}
    files = []
    for p in sorted(folder.rglob("*")):
        parts = p.name.split(".")
        if p.is_file() and len(parts) >= 2 and (parts[0] in codes or (len(parts) >= 3 and parts[-2] in codes)):
            files.append(p)
    return files


def _language_codes() -> set[str]:
    from xllama.languages import LANGUAGES

    return set(LANGUAGES)
