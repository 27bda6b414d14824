"""Loaders for what the mixer combines: instruction sets, parallel corpora and evaluation sets (for the guard).

Every loader takes a LOCATION: a local file, a folder of parts (read in natural order: part_2 before part_10),
or ``hf:owner/name[:config]`` for the Hugging Face Hub. Hub repos that still carry a loading script are read
through the ``json``/``parquet`` builders (see :mod:`xllama.data.hub`), never by running repo code.

Loaders return plain column lists (fast to clean and sample) plus provenance: which files, their size and
hash, or which Hub repo/config, and for every record where it came from (``file:line`` or ``file:record``),
so a dropped or suspicious example can be traced back to its source.

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

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

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


def read_records(path: Path, cache: dict | None = None) -> tuple[list[tuple[str, dict]], str]:
    """Records of a JSON array / JSONL / parquet file as (label, record) with label 'line N' or 'record N'."""
    key = str(path.resolve())
    if cache is not None and key in cache:
        return cache[key]
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        if suffix == ".jsonl":
            records = [(f"line {n}", r) for n, r in iter_jsonl(path)]
        else:
            records = list(_iter_gz_jsonl(path))
    elif suffix in (".json", ".json.gz"):
        records = _json_records(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        records = [(f"row {n}", r) for n, r in enumerate(pq.read_table(path).to_pylist(), 1)]
    else:
        raise XllamaError(f"cannot read records from {path}")
    result = (records, suffix)
    if cache is not None:
        cache[key] = result
    return result


def _json_records(path: Path) -> list[tuple[str, dict]]:
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
            return list(_jsonl_lines(path, text.split("\n")))
        raise XllamaError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(doc, list):
        raise XllamaError(f"{path}: expected a JSON array of records, got a JSON {type(doc).__name__}")
    records = []
    for n, r in enumerate(doc, 1):
        if not isinstance(r, dict):
            raise XllamaError(f"{path}: record {n}: expected a JSON object, got {type(r).__name__}")
        records.append((f"record {n}", r))
    return records


def _jsonl_lines(path: Path, lines):
    for n, record in parse_jsonl_lines(path, lines):
        yield f"line {n}", record


def _iter_gz_jsonl(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        yield from _jsonl_lines(path, f)


def _text(value, where: str, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise XllamaError(f"{where}: field {key!r} should be a string, got {type(value).__name__}")


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
    origin: list[str] = field(default_factory=list)
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


def _instructions_from_records(records: list[tuple[str, dict]], lang: str, path: Path) -> InstructionData:
    data = InstructionData(lang)
    if not records:
        return data
    ki, kin, ko, schema = instruction_schema(records[0][1].keys(), lang, f"{path}: {records[0][0]}")
    name = str(path)
    for label, r in records:
        where = f"{path}: {label}"
        try:
            ins, out = r[ki], r[ko]
        except KeyError as e:
            raise XllamaError(f"{where}: missing field {e.args[0]!r} (the file's first record has it)") from None
        data.instruction.append(_text(ins, where, ki))
        data.input.append(_text(r.get(kin), where, kin) if kin else "")
        data.output.append(_text(out, where, ko))
        data.origin.append(f"{name}:{label}")
    data.provenance["schema"] = schema
    return data


def _instructions_from_columns(ds, lang: str, where: str, origin_prefix: str) -> InstructionData:
    ki, kin, ko, schema = instruction_schema(ds.column_names, lang, where)
    data = InstructionData(lang)
    data.instruction = ["" if v is None else str(v) for v in ds[ki]]
    data.output = ["" if v is None else str(v) for v in ds[ko]]
    data.input = ["" if v is None else str(v) for v in ds[kin]] if kin in ds.column_names else [""] * len(ds)
    data.origin = [f"{origin_prefix}:row {n}" for n in range(1, len(ds) + 1)]
    data.provenance["schema"] = schema
    return data


def load_instructions(location: str, lang: str, cache: dict | None = None) -> InstructionData:
    """Instruction examples in ``lang`` from a file, a folder of parts, or ``hf:owner/name[:config]``."""
    lang = get_language(lang).code
    hub = parse_location(location)
    if hub:
        data = _load_hub_instructions(hub[0], hub[1], lang)
    else:
        path = _existing(location)
        files = _part_files(path, INSTRUCTION_SUFFIXES, "instruction") if path.is_dir() else [path]
        data = InstructionData(lang)
        infos, schemas = [], set()
        for f in files:
            if _suffix(f) not in INSTRUCTION_SUFFIXES:
                raise _unknown_format(f, INSTRUCTION_SUFFIXES, "instruction")
            records, _ = read_records(f, cache)
            part = _instructions_from_records(records, lang, f)
            if part.provenance:
                schemas.add(part.provenance["schema"])
            data.extend(part)
            infos.append(_cached_file_info(f, cache))
        data.provenance = {"location": location, "files": infos, "schema": ",".join(sorted(schemas))}
    data.provenance.update(lang=lang, records=len(data))
    if not len(data):
        raise XllamaError(f"no instruction records in {location}")
    return data


def _cached_file_info(path: Path, cache: dict | None) -> dict:
    key = ("info", str(path.resolve()))
    if cache is not None and key in cache:
        return cache[key]
    info = file_info(path)
    if cache is not None:
        cache[key] = info
    return info


def _load_hub_instructions(repo: str, config: str | None, lang: str) -> InstructionData:
    location = f"hf:{repo}" + (f":{config}" if config else "")
    if repo == BACTRIAN_X:
        # A script repo: read its gzipped JSON directly. 67,017 records = Alpaca + Dolly; keep the Alpaca half.
        code = config or lang
        path = f"data/{code}.json.gz"
        ds = load_hub_files("json", repo, path)
        if "id" not in ds.column_names:
            raise XllamaError(f"{location}: expected an 'id' field in {path} (got {ds.column_names})")
        ds = ds.filter(lambda ids: [str(i).startswith("alpaca-") for i in ids], input_columns="id", batched=True)
        data = _instructions_from_columns(ds, lang, location, f"{location}/{path}")
        data.provenance = _hub_info(repo, config, path, len(ds), url=hub_url(repo, path), kept="ids alpaca-*")
    else:
        ds = load_hub_dataset(repo, config, "train")
        data = _instructions_from_columns(ds, lang, location, location)
        data.provenance = _hub_info(repo, config, "train", len(ds), fingerprint=getattr(ds, "_fingerprint", None))
    data.provenance["location"] = location
    return data


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
    origin: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source)


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def load_aligned_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Two line-aligned files; different line counts name both files and both counts."""
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise XllamaError(f"file not found: {path}")
    source, target = _read_lines(src_path), _read_lines(tgt_path)
    if len(source) != len(target):
        raise XllamaError(
            f"parallel files differ in length: {src_path} has {len(source)} lines, {tgt_path} has {len(target)}"
        )
    return source, target


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


def _pairs_from_records(records, src: str, tgt: str, path: Path, data: ParallelData) -> None:
    if not records:
        return
    schema = _pair_schema(records[0][1].keys(), src, tgt, f"{path}: {records[0][0]}")
    get = _pair_getter(schema, src, tgt)
    name = str(path)
    for label, r in records:
        where = f"{path}: {label}"
        try:
            a, b = get(r)
        except (KeyError, TypeError):
            raise XllamaError(f"{where}: expected a {src}/{tgt} pair in the {schema} layout, got {r!r:.200}") from None
        data.source.append(_text(a, where, src))
        data.target.append(_text(b, where, tgt))
        data.origin.append(f"{name}:{label}")


def _pairs_from_tsv(path: Path, src: str, tgt: str, data: ParallelData) -> None:
    """TSV with two columns in the pair's order, a header naming the languages (any order), or WikiMatrix's
    three columns (score, source, target)."""
    lines = _read_lines(path)
    order, start = (0, 1), 0
    if lines:
        head = [c.strip().lower() for c in lines[0].split("\t")]
        if src in head and tgt in head:
            order, start = (head.index(src), head.index(tgt)), 1
    name = str(path)
    for n, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) == 3 and _is_number(cols[0]) and start == 0:
            cols = cols[1:]
        if len(cols) <= max(order):
            raise XllamaError(f"{path}: line {n}: expected {max(order) + 1} tab-separated columns, got {len(cols)}")
        data.source.append(cols[order[0]])
        data.target.append(cols[order[1]])
        data.origin.append(f"{name}:line {n}")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_parallel(location: str, src: str, tgt: str, cache: dict | None = None, split: str = "train") -> ParallelData:
    """Sentence pairs src->tgt from Moses files (folder, prefix or one of the files), TSV, JSON/JSONL/parquet
    ``{"translation": {src, tgt}}`` records (one file or a folder of parts), or a Hub corpus (its ``split``)."""
    src, tgt = get_language(src).code, get_language(tgt).code
    data = ParallelData(src, tgt)
    hub = parse_location(location)
    if hub:
        _load_hub_parallel(hub[0], hub[1], data, split)
        data.provenance["location"] = location
    else:
        path = Path(location).expanduser()
        pair = moses_files(path, src, tgt)
        if pair:
            data.source, data.target = load_aligned_pair(*pair)
            data.origin = [f"{pair[0]}:line {n}" for n in range(1, len(data.source) + 1)]
            data.provenance = {"location": location, "format": "moses", "files": [file_info(p) for p in pair]}
        else:
            path = _existing(location)
            files = _part_files(path, PARALLEL_SUFFIXES, f"{src}-{tgt} parallel") if path.is_dir() else [path]
            for f in files:
                suffix = _suffix(f)
                if suffix in (".tsv", ".tsv.gz"):
                    _pairs_from_tsv(f, src, tgt, data)
                elif suffix in PARALLEL_SUFFIXES:
                    _pairs_from_records(read_records(f, cache)[0], src, tgt, f, data)
                else:
                    raise _unknown_format(f, PARALLEL_SUFFIXES + (f"PREFIX.{src} + PREFIX.{tgt}",), "parallel")
            data.provenance = {"location": location, "format": "records", "files": [file_info(f) for f in files]}
    data.provenance.update(pair=f"{src}-{tgt}", pairs=len(data))
    if not len(data):
        raise XllamaError(f"no {src}-{tgt} sentence pairs in {location}")
    return data


def default_hub_config(repo: str, src: str, tgt: str) -> str:
    """WikiMatrix configs are 'en-xx'; NewsCommentary and OPUS-100 name pairs in alphabetical order."""
    if repo == WIKIMATRIX:
        other = tgt if src == "en" else src
        return f"en-{other}"
    return "-".join(sorted((src, tgt)))


def _load_hub_parallel(repo: str, config: str | None, data: ParallelData, split: str = "train") -> None:
    src, tgt = data.src, data.tgt
    config = config or default_hub_config(repo, src, tgt)
    ds = load_hub_dataset(repo, config, split)
    where = f"hf:{repo}:{config}" + ("" if split == "train" else f" ({split})")
    schema = _pair_schema(ds.column_names, src, tgt, where)
    if schema == "translation":
        pairs = ds["translation"]
        try:
            data.source = [p[src] for p in pairs]
            data.target = [p[tgt] for p in pairs]
        except (KeyError, TypeError):
            first = repr(pairs[0])[:200]
            raise XllamaError(f"{where}: 'translation' records lack {src!r} or {tgt!r} (first: {first})") from None
    elif schema == "columns":
        data.source, data.target = list(ds[src]), list(ds[tgt])
    else:
        en, other = list(ds["english"]), list(ds["non_english"])
        data.source, data.target = (en, other) if src == "en" else (other, en)
    data.source = ["" if s is None else str(s) for s in data.source]
    data.target = ["" if s is None else str(s) for s in data.target]
    data.origin = [f"{where}:row {n}" for n in range(1, len(ds) + 1)]
    data.provenance = _hub_info(repo, config, split, len(ds), fingerprint=getattr(ds, "_fingerprint", None))


# ----------------------------------------------------------------------------------------------------------
# Monolingual documents (ALMA stage 1)
# ----------------------------------------------------------------------------------------------------------


def iter_lines(path: Path):
    """The lines of a text file (.gz allowed), streamed, without their line ends."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n").rstrip("\r")


def load_documents(location: str, lang: str, text_field: str = "text", max_documents: int | None = None,
                   max_chars: int | None = None) -> tuple[list[str], dict]:
    """Documents of one location -> (non-empty documents, provenance). Local files: plain text (one document per
    line, .gz allowed), JSON/JSONL/parquet records with ``text_field``, or a folder of such files. ``hf:``
    locations (``hf:owner/name[:config]`` or ``hf:owner/name/GLOB``) are streamed; reading stops at
    ``max_documents`` or once ``max_chars`` characters are read."""
    import math

    limit = max_documents or math.inf
    char_limit = max_chars or math.inf
    docs: list[str] = []
    chars = 0

    def take(text, where: str) -> bool:
        nonlocal chars
        if text is None:
            return len(docs) < limit
        if not isinstance(text, str):
            raise XllamaError(f"{where}: field {text_field!r} should be a string, got {type(text).__name__}")
        text = text.strip()
        if text:
            docs.append(text)
            chars += len(text)
        return len(docs) < limit and chars < char_limit

    def records(items, where):
        for label, record in items:
            if text_field not in record:
                raise XllamaError(f"{where}: {label} has no field {text_field!r} (fields: {sorted(record)}); "
                                  "set data.text_field")
            if not take(record[text_field], f"{where}: {label}"):
                return False
        return True

    if location.startswith("hf:"):
        from xllama.data.hub import stream_hub

        stream, provenance = stream_hub(location)
        records(((f"row {n}", r) for n, r in enumerate(stream, 1)), location)
        provenance.update(documents=len(docs), chars=chars)
        return docs, provenance

    path = Path(location).expanduser()
    if not path.exists():
        raise XllamaError(f"monolingual {lang} text not found: {location}")
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key) \
        if path.is_dir() else [path]
    if not files:
        raise XllamaError(f"no files in monolingual {lang} folder {path}")
    used = []
    for f in files:
        used.append(file_info(f))
        if _suffix(f) in INSTRUCTION_SUFFIXES:
            more = records(read_records(f)[0], str(f))
        else:
            more = all(take(line, str(f)) for line in iter_lines(f))
        if not more:
            break
    return docs, {"location": location, "files": used, "documents": len(docs), "chars": chars}


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
