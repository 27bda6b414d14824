"""ALMA training data: stage 1 monolingual blocks and stage 2 translation pairs, for the training engine.

The trainer calls, for the tasks ``alma-monolingual`` and ``alma-parallel`` (see :mod:`xllama.train.data`):

- ``load_text(recipe) -> (Dataset, manifest)``: the raw text, saved in the run's ``data/`` with the manifest;
- ``texts(dataset)``: raw strings (the quickstart trains its BPE tokenizer on them);
- ``tokenize(dataset, tokenizer, recipe) -> (Dataset[input_ids, prompt_length], stats)``.

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
language has fewer blocks than its share). ``prompt_length`` is 0: loss on every token.

Hub locations: ``hf:owner/name:config`` streams a script-free Hub dataset (``load_dataset(repo, config,
streaming=True)``); ``hf:owner/name/GLOB`` streams data files through the parquet/json builder, for repos that
still carry a loading script (``hf:uonlp/CulturaX/de/*.parquet``). Streams stop once they hold about enough
text for the language's share, or ``max_documents``. ``XLLAMA_HUB_MIRROR`` points both at a local copy.

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

Every pair gives one example per direction: prompt ``alma_prompt(src, tgt, source)`` then " " + target + EOS;
``prompt_length`` is the number of prompt tokens, so the loss falls on the target and EOS only. The prompt and
the whole example are tokenised separately and the prompt length checked against the whole, so the model trains
on exactly the tokens it sees at inference time, where the prompt is tokenised alone.

Reading, cleaning and sampling are the shared data layer's (:mod:`xllama.data`): documents and pairs are read by
``sources.load_documents`` / ``sources.load_parallel``, pairs cleaned by ``mix.clean_pairs`` with the one
contamination guard (``guard.ContaminationGuard``: normalised keys and n-gram overlap, counts per rule in the
manifest), sub-sampled by ``sample.draw`` and shared out by ``sample.language_shares`` / ``sample.allocate``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
from xllama.data.mix import clean_pairs
from xllama.data.sample import allocate as allocate_blocks
from xllama.data.sample import draw
from xllama.data.sample import language_shares as shares_by_size
from xllama.data.sources import ParallelData, load_documents, load_guard, load_parallel
from xllama.errors import XllamaError
from xllama.languages import get_language, parse_pair

log = logging.getLogger(__name__)

MONOLINGUAL = "alma-monolingual"
PARALLEL = "alma-parallel"
FORMATS = {MONOLINGUAL: "xllama-alma-monolingual", PARALLEL: "xllama-alma-parallel"}
DIRECTIONS = ("both", "x-en", "en-x")
COMMON_KEYS = ("mix", "languages", "seed")
MONOLINGUAL_KEYS = COMMON_KEYS + ("monolingual", "ratios", "temperature", "token_budget", "block_size",
                                  "text_field", "max_documents")
PARALLEL_KEYS = COMMON_KEYS + ("parallel", "valid", "directions", "sizes", "valid_sizes", "guard")
RECORD_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
# ALMA's stage-1 sampling ratios (Xu et al. 2023, section 4), for documentation and the recipes.
ALMA_RATIOS = {"de": 0.20, "cs": 0.14, "is": 0.08, "zh": 0.19, "ru": 0.22, "en": 0.17}
# How much text to stream from a Hub corpus per token of a language's share: generous upper bounds on
# characters per token (Latin/Cyrillic text runs about 3-5, Chinese/Japanese/Korean about 1-1.5), so a stream
# rarely stops short; text read beyond the share is simply not sampled.
CHARS_PER_TOKEN = {"Hans": 2.5, "Hant": 2.5, "Jpan": 2.5, "Hang": 2.5}
DEFAULT_CHARS_PER_TOKEN = 6.0


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
        data, task = dict(recipe_or_data.data), recipe_or_data.task
    else:
        data = dict(recipe_or_data)
    if task not in FORMATS:
        raise XllamaError(f"xllama.alma.data handles the tasks {', '.join(FORMATS)}, not {task!r}")
    if not isinstance(data, dict):
        raise XllamaError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = MONOLINGUAL_KEYS if task == MONOLINGUAL else PARALLEL_KEYS
    for key in data:
        if key not in known:
            hint = ""
            if key in (PARALLEL_KEYS if task == MONOLINGUAL else MONOLINGUAL_KEYS):
                hint = f" (it belongs to the other ALMA stage; this recipe's task is {task})"
            raise XllamaError(f"{where}.{key}: unknown key for task {task}{hint}; expected one of {', '.join(known)}")
    mix = data.get("mix", "alma")
    if mix != "alma":
        raise XllamaError(
            f"{where}.mix: {mix!r} is an instruction-tuning mix; ALMA recipes take mix: alma or no mix key "
            "(`xllama train --lang` sets mix: x-llama when the recipe's data section has no mix key)"
        )
    seed = _int(data.get("seed", 42), f"{where}.seed", minimum=0)
    keep = _languages(data.get("languages"), f"{where}.languages")
    if task == MONOLINGUAL:
        return _monolingual_spec(data, keep, seed, where)
    return _parallel_spec(data, keep, seed, where)


def _monolingual_spec(data: dict, keep: list[str] | None, seed: int, where: str) -> MonolingualSpec:
    raw = data.get("monolingual")
    if not isinstance(raw, dict) or not raw:
        raise XllamaError(f"{where}.monolingual: expected a mapping language -> text location(s), "
                          "e.g. {de: data/mono.de.txt, en: hf:uonlp/CulturaX/en/*.parquet}")
    sources: dict[str, list[str]] = {}
    for lang, locations in raw.items():
        code = _language(lang, f"{where}.monolingual.{lang}")
        sources[code] = _locations(locations, f"{where}.monolingual.{lang}")
    listed = list(sources)
    if keep is not None:
        missing = [lang for lang in keep if lang not in sources]
        if missing:
            raise XllamaError(f"{where}.languages: no monolingual source for {', '.join(missing)} "
                              f"({where}.monolingual has {', '.join(sources)})")
        sources = {lang: locs for lang, locs in sources.items() if lang in keep or lang == "en"}

    ratios = temperature = None
    if data.get("ratios") is not None and data.get("temperature") is not None:
        raise XllamaError(f"{where}: give ratios (fixed shares) or temperature (temperature sampling), not both")
    if data.get("ratios") is not None:
        raw_ratios = data["ratios"]
        if not isinstance(raw_ratios, dict):
            raise XllamaError(f"{where}.ratios: expected a mapping language -> share, got {raw_ratios!r}")
        given = {}
        for lang, value in raw_ratios.items():
            code = _language(lang, f"{where}.ratios.{lang}")
            if code not in listed:
                raise XllamaError(f"{where}.ratios.{lang}: no monolingual source for this language "
                                  f"({where}.monolingual has {', '.join(listed)})")
            if not _is_number(value) or value <= 0:
                raise XllamaError(f"{where}.ratios.{lang}: expected a positive number, got {value!r}")
            given[code] = float(value)
        missing = [lang for lang in sources if lang not in given]
        if missing:
            raise XllamaError(f"{where}.ratios: no ratio for {', '.join(missing)}; give one per language in "
                              f"{where}.monolingual (or use temperature sampling)")
        total = sum(given[lang] for lang in sources)
        ratios = {lang: given[lang] / total for lang in sources}
    else:
        value = data.get("temperature", 1.0)
        if not _is_number(value) or value <= 0:
            raise XllamaError(f"{where}.temperature: expected a positive number, got {value!r}")
        temperature = float(value)

    if data.get("token_budget") is None:
        raise XllamaError(f"{where}.token_budget: stage 1 trains for a token budget, e.g. token_budget: 20B "
                          "(ALMA-7B) or 1M; none given")
    budget = parse_count(data["token_budget"], f"{where}.token_budget")
    block = data.get("block_size")
    block = None if block is None else _int(block, f"{where}.block_size", minimum=2)
    text_field = data.get("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        raise XllamaError(f"{where}.text_field: expected a field name, got {text_field!r}")
    max_docs = data.get("max_documents")
    max_docs = None if max_docs is None else _int(max_docs, f"{where}.max_documents", minimum=1)
    return MonolingualSpec(sources, ratios, temperature, budget, block, text_field, max_docs, seed)


def _parallel_spec(data: dict, keep: list[str] | None, seed: int, where: str) -> ParallelSpec:
    directions = data.get("directions", "both")
    if directions not in DIRECTIONS:
        raise XllamaError(f"{where}.directions: {directions!r} is not one of {', '.join(DIRECTIONS)}")
    pairs = _pair_locations(data.get("parallel"), f"{where}.parallel", required=True)
    valid = _pair_locations(data.get("valid"), f"{where}.valid", required=False)
    for pair in list(pairs) + list(valid):
        if directions != "both" and "en" not in pair.split("-"):
            raise XllamaError(f"{where}.directions: {directions} needs English in every pair, but {pair} has none "
                              "(use directions: both)")
    for pair in valid:
        if pair not in pairs:
            raise XllamaError(f"{where}.valid.{pair}: no training pairs for {pair} in {where}.parallel "
                              f"({', '.join(pairs)})")
    if keep is not None:
        chosen = lambda pair: any(lang in keep for lang in pair.split("-") if lang != "en")  # noqa: E731
        missing = [lang for lang in keep if not any(lang in pair.split("-") for pair in pairs)]
        if missing:
            raise XllamaError(f"{where}.languages: no parallel data for {', '.join(missing)} "
                              f"({where}.parallel has {', '.join(pairs)})")
        pairs = {p: locs for p, locs in pairs.items() if chosen(p)}
        valid = {p: locs for p, locs in valid.items() if chosen(p)}
    guard = data.get("guard") or []
    guard = _locations(guard, f"{where}.guard") if guard else []
    return ParallelSpec(
        pairs, valid, directions,
        _pair_sizes(data.get("sizes"), pairs, f"{where}.sizes"),
        _pair_sizes(data.get("valid_sizes"), valid, f"{where}.valid_sizes"),
        guard, seed,
    )


def _pair_locations(raw, where: str, required: bool) -> dict[str, list[str]]:
    if raw is None and not required:
        return {}
    if not isinstance(raw, dict) or (required and not raw):
        raise XllamaError(f"{where}: expected a mapping pair -> location(s), e.g. "
                          "{de-en: ../shared/data/parallel/alma-human-written/deen}")
    out = {}
    for pair, locations in raw.items():
        try:
            src, tgt = parse_pair(str(pair))
        except XllamaError as e:
            raise XllamaError(f"{where}.{pair}: {e}") from None
        out[f"{src}-{tgt}"] = _locations(locations, f"{where}.{pair}")
    return out


def _pair_sizes(raw, pairs: dict, where: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        size = _int(raw, where, minimum=1)
        return {pair: size for pair in pairs}
    sizes = {}
    for pair, value in raw.items():
        try:
            src, tgt = parse_pair(str(pair))
        except XllamaError as e:
            raise XllamaError(f"{where}.{pair}: {e}") from None
        key = f"{src}-{tgt}"
        if key not in pairs and f"{tgt}-{src}" in pairs:
            key = f"{tgt}-{src}"
        sizes[key] = _int(value, f"{where}.{pair}", minimum=1)
    return sizes


def _languages(value, where: str) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise XllamaError(f"{where}: expected a list of language codes, got {value!r}")
    return [_language(item, f"{where}[{i}]") for i, item in enumerate(items) if str(item).strip()]


def _language(code, where: str) -> str:
    try:
        return get_language(str(code)).code
    except XllamaError as e:
        raise XllamaError(f"{where}: {e}") from None


def _locations(value, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise XllamaError(f"{where}: expected a location (path or hf:owner/name[:config]) or a list of them, "
                          f"got {value!r}")
    return [v.strip() for v in items]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value, where: str, minimum: int = 0) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise XllamaError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(value, where: str) -> int:
    """20000000, 2e7, '20M' or '20B' -> an integer count (tokens)."""
    if _is_number(value):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise XllamaError(f"{where}: expected a token count such as 1000000, 1M or 20B, got {value!r}")
        number = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if number < 1:
        raise XllamaError(f"{where}: must be at least 1, got {value!r}")
    return int(number)


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
    for batch in dataset.iter(batch_size=2000):
        if "text" in columns:
            yield from batch["text"]
        else:
            for split, source, target in zip(batch["split"], batch["source"], batch["target"]):
                if split == "train":
                    yield source
                    yield target


def tokenize(dataset, tokenizer, recipe):
    """Token ids and prompt lengths the trainer packs: blocks (stage 1) or translation examples (stage 2)."""
    spec = parse_spec(recipe)
    if recipe.task == MONOLINGUAL:
        return tokenize_monolingual(dataset, tokenizer, spec, recipe.train.max_length)
    return tokenize_translations(dataset, tokenizer, recipe.train.max_length, split="train")


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


def load_monolingual(spec: MonolingualSpec, max_length: int):
    """All documents of every language -> (Dataset[text, lang], manifest), grouped by language."""
    import pyarrow as pa
    from datasets import Dataset
    from tqdm.auto import tqdm

    started = time.perf_counter()
    block = spec.block_size or max_length
    texts_out, langs_out = [], []
    per_language = {}
    digest = hashlib.blake2b(digest_size=16)
    for lang in tqdm(spec.languages, desc="reading monolingual text", unit="lang"):
        docs, provenance = [], []
        for location in spec.sources[lang]:
            left = None if spec.max_documents is None else spec.max_documents - len(docs)
            if left == 0:
                break
            limit = _stream_char_limit(spec, lang, block) if location.startswith("hf:") else None
            if location.startswith("hf:") and limit is None and spec.max_documents is None:
                raise XllamaError(
                    f"data.monolingual.{lang}: a Hub corpus ({location}) with temperature sampling needs "
                    "data.max_documents (the stream would otherwise be read to its end)"
                )
            part, info = load_documents(location, lang, spec.text_field, left, limit)
            docs += part
            provenance.append(info)
        if not docs:
            raise XllamaError(f"data.monolingual.{lang}: no non-empty documents in {', '.join(spec.sources[lang])}")
        for doc in docs:
            digest.update(doc.encode("utf-8"))
            digest.update(b"\n")
        per_language[lang] = {"documents": len(docs), "chars": sum(map(len, docs)), "sources": provenance}
        texts_out += docs
        langs_out += [lang] * len(docs)
    dataset = Dataset(pa.table({"text": pa.array(texts_out, pa.string()), "lang": pa.array(langs_out, pa.string())}))
    from xllama import __version__

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


def tokenize_monolingual(dataset, tokenizer, spec: MonolingualSpec, max_length: int):
    """Documents -> fixed-length blocks sampled to the token budget by language shares; prompt_length 0."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from tqdm.auto import tqdm

    from xllama.data.tokenize import batch_encode

    block = spec.block_size or max_length
    if block > max_length:
        raise XllamaError(f"data.block_size ({block}) exceeds train.max_length ({max_length})")
    eos = tokenizer.eos_token_id
    chunks: dict[str, list] = {lang: [] for lang in spec.languages}
    unexpected = set()
    bar = tqdm(total=len(dataset), desc="tokenising documents", unit="doc")
    for batch in dataset.iter(batch_size=2000):
        for lang, ids in zip(batch["lang"], batch_encode(tokenizer, batch["text"], add_special_tokens=True)):
            if lang not in chunks:
                unexpected.add(lang)
                continue
            ids.append(eos)
            chunks[lang].append(np.asarray(ids, dtype=np.int32))
        bar.update(len(batch["text"]))
    bar.close()
    if unexpected:
        raise XllamaError(f"the run's text has languages {sorted(unexpected)} that the recipe does not list; "
                          "rebuild the run's data (a new --out)")

    blocks, tokens = {}, {}
    for lang in spec.languages:
        parts = chunks.pop(lang)
        stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        tokens[lang] = int(stream.size)
        n = stream.size // block
        blocks[lang] = stream[: n * block].reshape(n, block)
    total = spec.token_budget // block
    if total < 1:
        raise XllamaError(f"data.token_budget ({spec.token_budget}) is smaller than one block of {block} tokens")
    shares = language_shares(spec, tokens)
    quota = allocate_blocks(shares, total)

    rng = np.random.default_rng(spec.seed)
    chosen, stats_langs = [], {}
    for lang in spec.languages:
        available, want = len(blocks[lang]), quota[lang]
        if want and not available:
            raise XllamaError(f"data.monolingual.{lang}: its share is {want} blocks of {block} tokens but its text "
                              f"has only {tokens[lang]} tokens (less than one block)")
        repeats, rest = divmod(want, available) if available else (0, 0)
        index = np.concatenate([np.tile(np.arange(available), repeats),
                                np.sort(rng.choice(available, size=rest, replace=False))]).astype(np.int64)
        chosen.append(blocks[lang][index])
        epochs = want / available if available else 0.0
        if epochs > 1:
            log.warning("%s: %d blocks wanted but only %d available: its text is repeated %.2f times", lang, want,
                        available, epochs)
        stats_langs[lang] = {"tokens_available": tokens[lang], "blocks_available": available, "blocks": want,
                             "share": round(shares[lang], 6), "epochs": round(epochs, 4)}
    ids = np.concatenate(chosen) if chosen else np.zeros((0, block), np.int32)
    # Arrow list offsets are int32: past 2**31 tokens they would wrap, so the column is built in chunks of fewer
    # than 2**31 tokens each (the training store's own offsets are int64: xllama.train.store).
    rows = max(1, (2**31 - 1) // block)
    chunks = [pa.ListArray.from_arrays(pa.array(np.arange(0, len(part) * block + 1, block, dtype=np.int32)),
                                       pa.array(part.reshape(-1)))
              for part in (ids[i : i + rows] for i in range(0, len(ids), rows))]
    table = pa.table({
        "input_ids": pa.chunked_array(chunks, type=pa.list_(pa.int32())),
        "prompt_length": pa.array(np.zeros(len(ids), dtype=np.int64)),
    })
    stats = {"task": MONOLINGUAL, "examples": len(ids), "block_size": block, "token_budget": spec.token_budget,
             "tokens": int(ids.size), "sampling": "ratios" if spec.ratios is not None else
             f"temperature {spec.temperature:g}", "languages": stats_langs}
    return Dataset(table), stats


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
                data.source += part.source
                data.target += part.target
                data.origin += part.origin
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
                    s, t = kept[i]
                    source, target = (s, t) if x == a else (t, s)
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
    dataset = Dataset(pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()}))
    by_direction = {}
    for x, y, split in zip(columns["src"], columns["tgt"], columns["split"]):
        by_direction.setdefault(split, {}).setdefault(f"{x}-{y}", 0)
        by_direction[split][f"{x}-{y}"] += 1
    from xllama import __version__

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


def tokenize_translations(dataset, tokenizer, max_length: int, split: str = "train", keep_direction: bool = False):
    """The rows of ``split`` -> (Dataset[input_ids, prompt_length (, direction)], stats) in ALMA's prompt."""
    import pyarrow as pa
    from datasets import Dataset

    from xllama.prompts import alma_prompt

    rows = dataset.select_columns(["src", "tgt", "source", "target", "split"]).to_dict()
    index = [i for i, s in enumerate(rows["split"]) if s == split]
    if not index:
        raise XllamaError(f"the run's text has no {split} pairs")
    src, tgt = [rows["src"][i] for i in index], [rows["tgt"][i] for i in index]
    prompts = [alma_prompt(s, t, rows["source"][i]) for s, t, i in zip(src, tgt, index)]
    targets = [rows["target"][i] for i in index]
    ids, plen, kept, stats = encode_translations(tokenizer, prompts, targets, max_length)
    if not ids:
        raise XllamaError(f"no {split} example fits in train.max_length={max_length} tokens")
    if stats["dropped_too_long"]:
        log.warning("%d %s examples longer than %d tokens were dropped", stats["dropped_too_long"], split, max_length)
    columns = {"input_ids": pa.array(ids, pa.list_(pa.int32())), "prompt_length": pa.array(plen, pa.int64())}
    if keep_direction:
        columns["direction"] = pa.array([f"{src[i]}-{tgt[i]}" for i in kept], pa.string())
    stats = {"task": PARALLEL, "split": split, **stats,
             "target_tokens": sum(len(x) - p for x, p in zip(ids, plen))}
    return Dataset(pa.table(columns)), stats
