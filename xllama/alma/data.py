"""ALMA training data: stage 1 monolingual blocks and stage 2 translation pairs, for the training engine.

The trainer calls, for the tasks ``alma-monolingual`` and ``alma-parallel`` (see :mod:`xllama.train.data`):
``load_text(recipe) -> (Dataset, manifest)`` (the raw text, saved in the run's ``data/``), ``texts(dataset)``
(raw strings, for the quickstart's BPE tokenizer) and ``tokenize(dataset, tokenizer, recipe, writer) -> stats``,
which writes every training example into the run's token store (:class:`xllama.train.store.StoreWriter`).

Stage 1 (``alma-monolingual``). Keys of the recipe's ``data`` section::

    monolingual: {de: LOCATION or [LOCATIONS], ..., en: ...}  # plain text (one document per line), JSON/JSONL/
                                                              # parquet records with a text field, or hf: corpora
    ratios: {de: 0.20, cs: 0.14, ...}   # fixed shares of the token budget (ALMA's), or
    temperature: 5                      # shares proportional to (tokens available)^(1/T); neither: T = 1
    token_budget: 20B                   # tokens to train on (an int, or with a K/M/B suffix)
    block_size: 512                     # default: train.max_length
    text_field: text                    # the field of JSON/parquet/Hub records
    max_documents: 100000               # read at most this many documents per language
    languages: [de, zh]                 # keep only these (English is kept whenever it has a source)
    seed: 42

Each language's documents are tokenised (BOS as the tokenizer adds it, EOS after every document), concatenated
and cut into blocks; the budget means ``token_budget // block_size`` blocks, shared out by the ratios (largest
remainder) and drawn at random from each language's blocks (repeated, and reported as ``epochs`` > 1, when a
language has fewer blocks than its share). Loss falls on every token. Memory does not grow with the corpus: the
text is streamed into a memory-mapped Arrow file, each language's tokens into a scratch file beside the store,
and the chosen blocks are copied from there into the store in chunks; only the block indices are held in RAM.

Hub locations (``hf:owner/name:config``, or ``hf:owner/name/GLOB`` for data files, e.g.
``hf:uonlp/CulturaX/de/*.parquet``) are streamed, and stop once they hold about enough text for the language's
share, or ``max_documents``. ``XLLAMA_HUB_MIRROR`` points them at a local copy.

Stage 2 (``alma-parallel``). Keys::

    parallel: {de-en: LOCATION or [LOCATIONS], ...}  # Moses files (folder or prefix), JSON/JSONL/TSV/parquet
                                                      # {"translation": {...}} records, or hf:owner/name[:config]
    valid: {de-en: LOCATION, ...}       # validation pairs for checkpoint selection (hf: reads split validation)
    directions: both                    # both (ALMA) | x-en | en-x
    sizes: {de-en: 2000} or 2000        # sub-sample training pairs (seeded), per pair or for every pair
    valid_sizes: {de-en: 200} or 200    # sub-sample validation pairs
    guard: [flores101]                  # evaluation sets whose sentences must not be trained on
    languages: [de, zh]                 # keep only pairs with these languages
    seed: 42

Every pair gives one example per direction: prompt ``alma_prompt(src, tgt, source)`` then " " + target + EOS,
with the loss on the target and EOS only (:func:`encode_translations`).

Everything but ALMA's own choices comes from the shared data layer (:mod:`xllama.data`): recipe values are
checked by :mod:`~xllama.data.fields`, documents and pairs read by ``sources.iter_documents`` /
``sources.load_parallel``, pairs cleaned by ``mix.clean_pairs`` with the one contamination guard, sub-sampled by
``sample.draw`` and shared out by ``sample.language_shares`` / ``sample.allocate``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from xllama.data import fields
from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
from xllama.data.mix import _scratch_parent, clean_pairs
from xllama.data.sample import allocate as allocate_blocks
from xllama.data.sample import draw
from xllama.data.sample import language_shares as shares_by_size
from xllama.data.sources import ParallelData, iter_documents, load_guard, load_parallel
from xllama.errors import XllamaError
from xllama.languages import get_language

log = logging.getLogger(__name__)

MONOLINGUAL = "alma-monolingual"
PARALLEL = "alma-parallel"
FORMATS = {MONOLINGUAL: "xllama-alma-monolingual", PARALLEL: "xllama-alma-parallel"}
DIRECTIONS = ("both", "x-en", "en-x")
COMMON_KEYS = ("mix", "languages", "seed")
MONOLINGUAL_KEYS = COMMON_KEYS + ("monolingual", "ratios", "temperature", "token_budget", "block_size",
                                  "text_field", "max_documents")
PARALLEL_KEYS = COMMON_KEYS + ("parallel", "valid", "directions", "sizes", "valid_sizes", "guard")
# ALMA's stage-1 sampling ratios (Xu et al. 2023, section 4), for documentation and the recipes.
ALMA_RATIOS = {"de": 0.20, "cs": 0.14, "is": 0.08, "zh": 0.19, "ru": 0.22, "en": 0.17}
# How much text to stream from a Hub corpus per token of a language's share: generous upper bounds on
# characters per token (Latin/Cyrillic text runs about 3-5, Chinese/Japanese/Korean about 1-1.5), so a stream
# rarely stops short; text read beyond the share is simply not sampled.
CHARS_PER_TOKEN = {"Hans": 2.5, "Hant": 2.5, "Jpan": 2.5, "Hang": 2.5}
DEFAULT_CHARS_PER_TOKEN = 6.0
BATCH = 2000  # documents or pairs per tokeniser call
CHUNK_BYTES = 16 << 20  # stage-1 blocks are copied into the store this many bytes of scratch file at a time

# xllama.alma.cpo parses its spec with these (they are xllama.data.fields')
_int, _languages, _locations = fields.integer, fields.language_list, fields.locations


# ----------------------------------------------------------------------------------------------------------
# Reading and checking the recipe's data section
# ----------------------------------------------------------------------------------------------------------


@dataclass
class MonolingualSpec:
    sources: dict[str, list[str]]  # language -> locations, in use order
    ratios: dict[str, float] | None  # normalised over the languages in use
    temperature: float | None
    token_budget: int
    block_size: int | None
    text_field: str = "text"
    max_documents: int | None = None
    seed: int = 42

    @property
    def languages(self) -> list[str]:
        return list(self.sources)


@dataclass
class ParallelSpec:
    pairs: dict[str, list[str]]  # "de-en" -> locations
    valid: dict[str, list[str]] = field(default_factory=dict)
    directions: str = "both"
    sizes: dict[str, int] = field(default_factory=dict)
    valid_sizes: dict[str, int] = field(default_factory=dict)
    guard: list[str] = field(default_factory=list)
    seed: int = 42


def parse_spec(recipe_or_data, task: str | None = None, where: str = "recipe.data"):
    """Validate the recipe's ``data`` dict for an ALMA task -> MonolingualSpec or ParallelSpec."""
    if task is None:
        data, task = recipe_or_data.data, recipe_or_data.task
    else:
        data = recipe_or_data
    if task not in FORMATS:
        raise XllamaError(f"xllama.alma.data handles the tasks {', '.join(FORMATS)}, not {task!r}")
    if not isinstance(data, dict):
        raise XllamaError(f"{where}: expected a mapping, got {type(data).__name__}")
    known, other = (MONOLINGUAL_KEYS, PARALLEL_KEYS) if task == MONOLINGUAL else (PARALLEL_KEYS, MONOLINGUAL_KEYS)
    for key in data:
        if key not in known:
            hint = f" (it belongs to the other ALMA stage; this recipe's task is {task})" if key in other else ""
            raise XllamaError(f"{where}.{key}: unknown key for task {task}{hint}; expected one of {', '.join(known)}")
    if data.get("mix", "alma") != "alma":
        raise XllamaError(
            f"{where}.mix: {data['mix']!r} is an instruction-tuning mix; ALMA recipes take mix: alma or no mix key "
            "(`xllama train --lang` sets mix: x-llama when the recipe's data section has no mix key)"
        )
    seed = fields.integer(data.get("seed", 42), f"{where}.seed", minimum=0)
    keep = fields.language_list(data.get("languages"), f"{where}.languages")
    if task == MONOLINGUAL:
        return _monolingual_spec(data, keep, seed, where)
    return _parallel_spec(data, keep, seed, where)


def _monolingual_spec(data: dict, keep: list[str] | None, seed: int, where: str) -> MonolingualSpec:
    raw = data.get("monolingual")
    if not isinstance(raw, dict) or not raw:
        raise XllamaError(f"{where}.monolingual: expected a mapping language -> text location(s), "
                          "e.g. {de: data/mono.de.txt, en: hf:uonlp/CulturaX/en/*.parquet}")
    at = f"{where}.monolingual"
    sources = fields.language_locations(raw, at)
    listed = list(sources)
    if keep is not None:
        missing = [lang for lang in keep if lang not in sources]
        if missing:
            raise XllamaError(f"{where}.languages: no monolingual source for {', '.join(missing)} "
                              f"({at} has {', '.join(listed)})")
        sources = {lang: locs for lang, locs in sources.items() if lang in keep or lang == "en"}

    ratios = temperature = None
    if data.get("ratios") is not None and data.get("temperature") is not None:
        raise XllamaError(f"{where}: give ratios (fixed shares) or temperature (temperature sampling), not both")
    if data.get("ratios") is not None:
        if not isinstance(data["ratios"], dict):
            raise XllamaError(f"{where}.ratios: expected a mapping language -> share, got {data['ratios']!r}")
        given = {}
        for lang, value in data["ratios"].items():
            code = fields.language(lang, f"{where}.ratios.{lang}")
            if code not in listed:
                raise XllamaError(f"{where}.ratios.{lang}: no monolingual source for this language "
                                  f"({at} has {', '.join(listed)})")
            given[code] = fields.positive_number(value, f"{where}.ratios.{lang}")
        missing = [lang for lang in sources if lang not in given]
        if missing:
            raise XllamaError(f"{where}.ratios: no ratio for {', '.join(missing)}; give one per language in "
                              f"{at} (or use temperature sampling)")
        total = sum(given[lang] for lang in sources)
        ratios = {lang: given[lang] / total for lang in sources}
    else:
        temperature = fields.positive_number(data.get("temperature", 1.0), f"{where}.temperature")

    if data.get("token_budget") is None:
        raise XllamaError(f"{where}.token_budget: stage 1 trains for a token budget, e.g. token_budget: 20B "
                          "(ALMA-7B) or 1M; none given")
    budget = fields.parse_count(data["token_budget"], f"{where}.token_budget")
    block = data.get("block_size")
    block = None if block is None else fields.integer(block, f"{where}.block_size", minimum=2)
    text_field = data.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        raise XllamaError(f"{where}.text_field: expected a field name, got {text_field!r}")
    max_docs = data.get("max_documents")
    max_docs = None if max_docs is None else fields.integer(max_docs, f"{where}.max_documents", minimum=1)
    return MonolingualSpec(sources, ratios, temperature, budget, block, text_field, max_docs, seed)


def _parallel_spec(data: dict, keep: list[str] | None, seed: int, where: str) -> ParallelSpec:
    directions = data.get("directions", "both")
    if directions not in DIRECTIONS:
        raise XllamaError(f"{where}.directions: {directions!r} is not one of {', '.join(DIRECTIONS)}")
    if not isinstance(data.get("parallel"), dict) or not data["parallel"]:
        raise XllamaError(f"{where}.parallel: expected a mapping pair -> location(s), e.g. "
                          "{de-en: ../shared/data/parallel/alma-human-written/deen}")
    pairs = fields.pair_locations(data["parallel"], f"{where}.parallel")
    valid = fields.pair_locations(data.get("valid"), f"{where}.valid")
    for pair in list(pairs) + list(valid):
        if directions != "both" and "en" not in pair.split("-"):
            raise XllamaError(f"{where}.directions: {directions} needs English in every pair, but {pair} has none "
                              "(use directions: both)")
    for pair in valid:
        if pair not in pairs:
            raise XllamaError(f"{where}.valid.{pair}: no training pairs for {pair} in {where}.parallel "
                              f"({', '.join(pairs)})")
    if keep is not None:
        missing = [lang for lang in keep if not any(lang in pair.split("-") for pair in pairs)]
        if missing:
            raise XllamaError(f"{where}.languages: no parallel data for {', '.join(missing)} "
                              f"({where}.parallel has {', '.join(pairs)})")
        chosen = lambda pair: any(lang in keep for lang in pair.split("-") if lang != "en")  # noqa: E731
        pairs = {p: locs for p, locs in pairs.items() if chosen(p)}
        valid = {p: locs for p, locs in valid.items() if chosen(p)}
    guard = fields.locations(data["guard"], f"{where}.guard") if data.get("guard") else []
    return ParallelSpec(pairs, valid, directions, _pair_sizes(data.get("sizes"), pairs, f"{where}.sizes"),
                        _pair_sizes(data.get("valid_sizes"), valid, f"{where}.valid_sizes"), guard, seed)


def _pair_sizes(raw, pairs: dict, where: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return dict.fromkeys(pairs, fields.integer(raw, where, minimum=1))
    sizes = {}
    for pair, value in raw.items():
        key = fields.language_pair(pair, f"{where}.{pair}")
        if key not in pairs and "-".join(key.split("-")[::-1]) in pairs:
            key = "-".join(key.split("-")[::-1])
        sizes[key] = fields.integer(value, f"{where}.{pair}", minimum=1)
    return sizes


# ----------------------------------------------------------------------------------------------------------
# The task-module interface
# ----------------------------------------------------------------------------------------------------------


def load_text(recipe):
    """The raw text of an ALMA stage as a datasets.Dataset, plus a manifest of what went in."""
    spec = parse_spec(recipe)
    if recipe.task == MONOLINGUAL:
        return load_monolingual(spec, recipe.train.max_length)
    return load_parallel_text(spec)


def texts(dataset):
    """Raw strings of the training text (for training a tokenizer)."""
    columns = dataset.column_names
    for batch in dataset.iter(batch_size=BATCH):
        if "text" in columns:
            yield from batch["text"]
        else:
            for split, source, target in zip(batch["split"], batch["source"], batch["target"]):
                if split == "train":
                    yield source
                    yield target


def tokenize(dataset, tokenizer, recipe, writer) -> dict:
    """Write the examples the trainer packs into ``writer`` (a StoreWriter): blocks (stage 1) or translation
    examples (stage 2); return their statistics."""
    spec = parse_spec(recipe)
    if recipe.task == MONOLINGUAL:
        return tokenize_monolingual(dataset, tokenizer, spec, recipe.train.max_length, writer)
    return encode_split(dataset, tokenizer, recipe.train.max_length, "train", lambda ids, plen, _: writer.add(ids, plen))


# ----------------------------------------------------------------------------------------------------------
# Stage 1: monolingual text
# ----------------------------------------------------------------------------------------------------------


def _stream_char_limit(spec: MonolingualSpec, lang: str, block_size: int) -> int | None:
    """Characters to stream from a Hub corpus for ``lang``: about its share of the budget, generously."""
    if spec.ratios is None:
        return None  # temperature sampling needs the corpus sizes: bounded by max_documents only
    tokens = spec.ratios[lang] * spec.token_budget + block_size
    script = get_language(lang).script
    return int(tokens * CHARS_PER_TOKEN.get(script, DEFAULT_CHARS_PER_TOKEN))


def _document_batches(spec: MonolingualSpec, lang: str, block: int, provenance: list):
    """Batches of ``lang``'s non-empty documents, location after location, up to ``max_documents``; each
    location's provenance is appended to ``provenance``."""
    count = 0
    for location in spec.sources[lang]:
        left = None if spec.max_documents is None else spec.max_documents - count
        if left == 0:
            break
        limit = _stream_char_limit(spec, lang, block) if location.startswith("hf:") else None
        if location.startswith("hf:") and limit is None and spec.max_documents is None:
            raise XllamaError(f"data.monolingual.{lang}: a Hub corpus ({location}) with temperature sampling needs "
                              "data.max_documents (the stream would otherwise be read to its end)")
        info: dict = {}
        for docs in iter_documents(location, lang, spec.text_field, left, limit, info, batch=BATCH):
            yield docs
        count += info["documents"]
        provenance.append(info)


def load_monolingual(spec: MonolingualSpec, max_length: int):
    """Every language's documents -> (Dataset[text, lang] memory-mapped from disk, manifest), grouped by
    language. The text is written to an Arrow file in batches: memory does not grow with the corpus."""
    import pyarrow as pa
    from datasets import Dataset
    from tqdm.auto import tqdm

    from xllama import __version__

    started = time.perf_counter()
    block = spec.block_size or max_length
    per_language = {}
    digest = hashlib.blake2b(digest_size=16)
    schema = pa.schema([("text", pa.string()), ("lang", pa.string())])
    parent = _scratch_parent(None)  # $XLLAMA_CACHE/tmp or $TMPDIR, as the mixer's: it needs room for the corpus
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".xllama-alma-text-", dir=parent))
    try:
        path = scratch / "text.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as out, \
                tqdm(desc="reading monolingual text", unit="doc") as bar:
            for lang in spec.languages:
                provenance, documents, chars = [], 0, 0
                for docs in _document_batches(spec, lang, block, provenance):
                    for doc in docs:
                        digest.update(doc.encode("utf-8"))
                        digest.update(b"\n")
                    chars += sum(map(len, docs))
                    documents += len(docs)
                    out.write_batch(pa.record_batch([pa.array(docs, pa.string()), pa.array([lang] * len(docs))],
                                                    schema=schema))
                    bar.update(len(docs))
                if not documents:
                    raise XllamaError(f"data.monolingual.{lang}: no non-empty documents in "
                                      f"{', '.join(spec.sources[lang])}")
                per_language[lang] = {"documents": documents, "chars": chars, "sources": provenance}
        dataset = Dataset.from_file(str(path))  # memory-mapped
        weakref.finalize(dataset, shutil.rmtree, str(scratch), True)  # write_mix copies it into the run first
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    manifest = {
        "format": FORMATS[MONOLINGUAL],
        "version": 1,
        "task": MONOLINGUAL,
        "examples": len(dataset),
        "columns": ["text", "lang"],
        "languages": per_language,
        "sampling": {"ratios": spec.ratios} if spec.ratios is not None else {"temperature": spec.temperature},
        "token_budget": spec.token_budget,
        "block_size": block,
        "seed": spec.seed,
        "content_hash": digest.hexdigest(),
        "xllama_version": __version__,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    return dataset, manifest


def language_shares(spec: MonolingualSpec, tokens: dict[str, int]) -> dict[str, float]:
    """Each language's share of the budget: the fixed ratios, or tokens^(1/T) normalised (temperature)."""
    if spec.ratios is not None:
        return dict(spec.ratios)
    return shares_by_size({lang: tokens[lang] for lang in spec.languages}, spec.temperature)


def _tokens_to_files(dataset, tokenizer, languages: list[str], scratch: Path, dtype) -> dict[str, int]:
    """Tokenise the documents in batches, appending each language's tokens (EOS after every document) to
    ``scratch/<lang>.bin``; return the tokens per language."""
    import numpy as np
    from tqdm.auto import tqdm

    from xllama.data.tokenize import batch_encode

    eos = tokenizer.eos_token_id
    tokens = dict.fromkeys(languages, 0)
    files = {lang: open(scratch / f"{lang}.bin", "wb") for lang in languages}
    try:
        with tqdm(total=len(dataset), desc="tokenising documents", unit="doc") as bar:
            for batch in dataset.select_columns(["text", "lang"]).iter(batch_size=BATCH):
                by_lang: dict[str, list] = {}
                for lang, ids in zip(batch["lang"], batch_encode(tokenizer, batch["text"], add_special_tokens=True)):
                    if lang not in files:
                        raise XllamaError(f"the run's text has language {lang!r}, which the recipe does not list; "
                                          "rebuild the run's data (a new --out)")
                    by_lang.setdefault(lang, []).append(ids)
                for lang, docs in by_lang.items():
                    ends = np.cumsum(np.fromiter(map(len, docs), np.int64, count=len(docs)))
                    flat = np.fromiter(chain.from_iterable(docs), np.int64, count=int(ends[-1]))
                    np.insert(flat.astype(dtype), ends, eos).tofile(files[lang])  # EOS after every document
                    tokens[lang] += int(ends[-1]) + len(docs)
                bar.update(len(batch["lang"]))
    finally:
        for f in files.values():
            f.close()
    return tokens


def _copy_blocks(writer, path: Path, dtype, block: int, index) -> None:
    """Rows ``index`` of the scratch file ``path`` (seen as blocks of ``block`` tokens) -> ``writer``, in order.
    The file is mapped afresh for each chunk, so the pages read do not stay resident."""
    import numpy as np

    rows = max(1, CHUNK_BYTES // (block * dtype.itemsize + 8192))
    for start in range(0, len(index), rows):
        stream = np.memmap(path, dtype=dtype, mode="r")
        blocks = stream[: len(stream) // block * block].reshape(-1, block)
        part = blocks[index[start : start + rows]]
        del stream, blocks
        writer.add(part, np.zeros(len(part), np.int32))


def tokenize_monolingual(dataset, tokenizer, spec: MonolingualSpec, max_length: int, writer) -> dict:
    """Documents -> fixed-length blocks sampled to the token budget by language shares, written to ``writer``
    (loss on every token); returns the statistics. Scratch token files live beside the store."""
    import numpy as np

    from xllama.train.store import token_dtype

    block = spec.block_size or max_length
    if block > max_length:
        raise XllamaError(f"data.block_size ({block}) exceeds train.max_length ({max_length})")
    total = spec.token_budget // block
    if total < 1:
        raise XllamaError(f"data.token_budget ({spec.token_budget}) is smaller than one block of {block} tokens")
    dtype = token_dtype(len(tokenizer))
    store = Path(writer.directory)
    store.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{store.name}.alma-", dir=store.parent) as scratch:
        scratch = Path(scratch)
        tokens = _tokens_to_files(dataset, tokenizer, spec.languages, scratch, dtype)
        shares = language_shares(spec, tokens)
        quota = allocate_blocks(shares, total)
        rng = np.random.default_rng(spec.seed)
        stats_langs = {}
        for lang in spec.languages:
            available, want = tokens[lang] // block, quota[lang]
            if want and not available:
                raise XllamaError(f"data.monolingual.{lang}: its share is {want} blocks of {block} tokens but its "
                                  f"text has only {tokens[lang]} tokens (less than one block)")
            repeats, rest = divmod(want, available) if available else (0, 0)
            index = np.concatenate([np.tile(np.arange(available), repeats),
                                    np.sort(rng.choice(available, size=rest, replace=False))]).astype(np.int64)
            _copy_blocks(writer, scratch / f"{lang}.bin", dtype, block, index)
            os.remove(scratch / f"{lang}.bin")
            epochs = want / available if available else 0.0
            if epochs > 1:
                log.warning("%s: %d blocks wanted but only %d available: its text is repeated %.2f times", lang,
                            want, available, epochs)
            stats_langs[lang] = {"tokens_available": tokens[lang], "blocks_available": available, "blocks": want,
                                 "share": round(shares[lang], 6), "epochs": round(epochs, 4)}
    return {"task": MONOLINGUAL, "examples": total, "block_size": block, "token_budget": spec.token_budget,
            "tokens": total * block, "sampling": "ratios" if spec.ratios is not None else
            f"temperature {spec.temperature:g}", "languages": stats_langs}


# ----------------------------------------------------------------------------------------------------------
# Stage 2: translation pairs
# ----------------------------------------------------------------------------------------------------------


def _guard(spec: ParallelSpec) -> tuple[ContaminationGuard | None, list[dict]]:
    languages = sorted({lang for pair in spec.pairs for lang in pair.split("-") if lang != "en"})
    sets = [load_guard(location, languages) for location in spec.guard]
    return (ContaminationGuard(sets) if sets else None), [g.provenance for g in sets]


def _directions(spec: ParallelSpec, a: str, b: str) -> list[tuple[str, str]]:
    if spec.directions == "both":
        return [(a, b), (b, a)]
    x = a if b == "en" else b
    return [(x, "en")] if spec.directions == "x-en" else [("en", x)]


def load_parallel_text(spec: ParallelSpec):
    """Training and validation pairs -> (Dataset[src, tgt, source, target, split], manifest); one row per
    direction, so the text set is exactly what is trained on."""
    import pyarrow as pa
    from datasets import Dataset

    from xllama import __version__

    started = time.perf_counter()
    guard, guard_info = _guard(spec)
    report = GuardReport(guard) if guard else None
    columns = {c: [] for c in ("src", "tgt", "source", "target", "split")}
    pairs_report = {"train": {}, "valid": {}}
    digest = hashlib.blake2b(digest_size=16)
    seen_train = set()
    for split, locations, sizes in (("train", spec.pairs, spec.sizes), ("valid", spec.valid, spec.valid_sizes)):
        for pair, locs in locations.items():
            a, b = pair.split("-")
            data, provenance = ParallelData(a, b), []
            for location in locs:
                if split == "valid" and not location.startswith("hf:") and Path(location).expanduser().is_dir():
                    raise XllamaError(f"data.valid.{pair}: {location} is a folder; give the validation file itself "
                                      f"(e.g. {Path(location) / f'valid.{pair}.json'}), so that training pairs are "
                                      "never taken for validation ones")
                part = load_parallel(location, a, b, split="train" if split == "train" else "validation")
                data.extend(part)
                provenance.append(part.provenance)
            index, removed = clean_pairs(data, f"{split}:{pair}", report if split == "train" else None)
            kept = [(data.source[i].strip(), data.target[i].strip()) for i in index]
            keys = {hash((normalize(s), normalize(t))) for s, t in kept}
            if split == "valid":
                overlap = len(keys & seen_train)
                if overlap:
                    log.warning("%d of %d %s validation pairs also occur in the training pairs", overlap, len(kept),
                                pair)
            else:
                seen_train |= keys
            index, drawn = draw(list(range(len(kept))), sizes.get(pair), spec.seed, f"{split}:{pair}")
            for x, y in _directions(spec, a, b):
                for i in index:
                    source, target = kept[i] if x == a else kept[i][::-1]
                    for column, value in zip(columns, (x, y, source, target, split)):
                        columns[column].append(value)
                    digest.update(f"{split}\t{x}\t{y}\t{source}\t{target}\n".encode("utf-8"))
            pairs_report[split][pair] = {"loaded": len(data), "removed": removed.as_dict(), "kept": len(kept),
                                         "used": len(index), "sizes": drawn,
                                         "directions": [f"{x}-{y}" for x, y in _directions(spec, a, b)],
                                         "sources": provenance}
    n_train = columns["split"].count("train")
    if n_train == 0:
        raise XllamaError("no training pairs left after cleaning (empty sides, duplicates, guard)")
    by_direction = {}
    for x, y, split in zip(columns["src"], columns["tgt"], columns["split"]):
        by_direction.setdefault(split, {}).setdefault(f"{x}-{y}", 0)
        by_direction[split][f"{x}-{y}"] += 1
    dataset = Dataset(pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()}))
    manifest = {
        "format": FORMATS[PARALLEL],
        "version": 1,
        "task": PARALLEL,
        "examples": n_train,
        "valid_examples": len(dataset) - n_train,
        "columns": list(columns),
        "directions": spec.directions,
        "by_direction": by_direction,
        "pairs": pairs_report["train"],
        "valid": pairs_report["valid"],
        "guard": guard_info,
        **guard_manifest(report),
        "seed": spec.seed,
        "content_hash": digest.hexdigest(),
        "xllama_version": __version__,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    return dataset, manifest


def encode_translations(tokenizer, prompts: list[str], targets: list[str], max_length: int):
    """(prompt, target) -> (input_ids lists, prompt lengths, kept indices, stats).

    ids = tokens of ``prompt + " " + target`` then EOS; the prompt length is that of the prompt tokenised alone
    (as at inference), checked to be a prefix of the whole. Examples longer than ``max_length`` are dropped, not
    cut: a truncated target without its EOS would teach the model to translate half a sentence.
    """
    from xllama.data.tokenize import batch_encode

    eos = tokenizer.eos_token_id
    enc_prompt = batch_encode(tokenizer, prompts, add_special_tokens=True)
    enc_full = batch_encode(tokenizer, [p + " " + t for p, t in zip(prompts, targets)], add_special_tokens=True)
    ids_out, plen_out, kept = [], [], []
    stats = {"examples": 0, "dropped_too_long": 0, "boundary_merged": 0}
    for i, (p, full) in enumerate(zip(enc_prompt, enc_full)):
        n = len(p)
        if full[:n] != p:  # the tokenizer merged a token across the prompt/target boundary
            n = next(k for k, (x, y) in enumerate(zip(p, full)) if x != y)
            stats["boundary_merged"] += 1
        ids = full + [eos]
        if len(ids) > max_length:
            stats["dropped_too_long"] += 1
            continue
        ids_out.append(ids)
        plen_out.append(n)
        kept.append(i)
    stats["examples"] = len(ids_out)
    return ids_out, plen_out, kept, stats


def encode_split(dataset, tokenizer, max_length: int, split: str, emit) -> dict:
    """Tokenise the rows of ``split`` in ALMA's prompt, batch by batch: ``emit(input_ids, prompt_lengths,
    directions)`` for each batch; return the statistics."""
    from xllama.prompts import alma_prompt

    stats = {"task": PARALLEL, "split": split, "examples": 0, "dropped_too_long": 0, "boundary_merged": 0,
             "target_tokens": 0}
    rows = 0
    for batch in dataset.select_columns(["src", "tgt", "source", "target", "split"]).iter(batch_size=BATCH):
        index = [i for i, s in enumerate(batch["split"]) if s == split]
        rows += len(index)
        prompts = [alma_prompt(batch["src"][i], batch["tgt"][i], batch["source"][i]) for i in index]
        ids, plen, kept, counts = encode_translations(tokenizer, prompts, [batch["target"][i] for i in index],
                                                      max_length)
        for key, value in counts.items():
            stats[key] += value
        stats["target_tokens"] += sum(len(x) - p for x, p in zip(ids, plen))
        if ids:
            emit(ids, plen, [f"{batch['src'][index[k]]}-{batch['tgt'][index[k]]}" for k in kept])
    if not rows:
        raise XllamaError(f"the run's text has no {split} pairs")
    if not stats["examples"]:
        raise XllamaError(f"no {split} example fits in train.max_length={max_length} tokens")
    if stats["dropped_too_long"]:
        log.warning("%d %s examples longer than %d tokens were dropped", stats["dropped_too_long"], split, max_length)
    return stats


def tokenize_translations(dataset, tokenizer, max_length: int, split: str = "train", keep_direction: bool = False):
    """The rows of ``split`` -> (Dataset[input_ids, prompt_length (, direction)], stats) in memory: for the
    validation pairs (checkpoint selection); training examples go to the store (:func:`tokenize`)."""
    import pyarrow as pa
    from datasets import Dataset

    ids, plen, directions = [], [], []
    stats = encode_split(dataset, tokenizer, max_length, split,
                         lambda i, p, d: (ids.extend(i), plen.extend(p), directions.extend(d)))
    columns = {"input_ids": pa.array(ids, pa.list_(pa.int32())), "prompt_length": pa.array(plen, pa.int64())}
    if keep_direction:
        columns["direction"] = pa.array(directions, pa.string())
    return Dataset(pa.table(columns)), stats
