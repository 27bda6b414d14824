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

The text is a monolingual corpus (:func:`xllama.data.corpus.build_corpus`: streamed, language-checked, on disk).
Each language's documents are tokenised into a scratch token file (BOS as the tokenizer adds it, EOS after every
document) and cut into blocks; the budget means ``token_budget // block_size`` blocks, shared out by the ratios
(largest remainder) and drawn at random from each language's blocks (repeated, and reported as ``epochs`` > 1,
when a language has fewer blocks than its share), then copied into the store in chunks. Loss on every token.
Hub corpora stop once they hold about enough text for the language's share (or ``max_documents``).

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

The pairs are an xllama mix (:func:`xllama.data.mix.build_mix`: language check, cleaning, the contamination
guard, de-duplication, sub-sampling; no length filters), the validation pairs a second one (no guard), stored
together with a ``split`` column. Every row is one direction of a pair: prompt ``alma_prompt(src, tgt, input)``
then " " + output + EOS, loss on the output and EOS only (:func:`xllama.data.tokenize.encode_prompted`).

Both stages take ``accept_language_mismatch: true`` to build from a source whose text is not in its labelled
language (the data layer's language check stops otherwise).
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from xllama.data import fields
from xllama.data.guard import normalize
from xllama.data.mix import MixSpec, build_mix, with_sections
from xllama.data.sample import allocate as allocate_blocks
from xllama.data.sample import language_shares as shares_by_size
from xllama.errors import XllamaError
from xllama.languages import get_language

log = logging.getLogger(__name__)

MONOLINGUAL = "alma-monolingual"
PARALLEL = "alma-parallel"
DIRECTIONS = ("both", "x-en", "en-x")
COMMON_KEYS = ("mix", "languages", "seed", "accept_language_mismatch")
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
BATCH = 2000  # rows per tokeniser call
CHUNK_BYTES = 16 << 20  # stage-1 blocks are copied into the store this many bytes of scratch file at a time


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
    accept_language_mismatch: bool = False

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
    accept_language_mismatch: bool = False


def parse_spec(recipe_or_data, task: str | None = None, where: str = "recipe.data"):
    """Validate the recipe's ``data`` dict for an ALMA task -> MonolingualSpec or ParallelSpec."""
    if task is None:
        data, task = recipe_or_data.data, recipe_or_data.task
    else:
        data = recipe_or_data
    if task not in (MONOLINGUAL, PARALLEL):
        raise XllamaError(f"xllama.alma.data handles the tasks {MONOLINGUAL} and {PARALLEL}, not {task!r}")
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
    accept = data.get("accept_language_mismatch", False)
    if not isinstance(accept, bool):
        raise XllamaError(f"{where}.accept_language_mismatch: expected true or false, got {accept!r}")
    spec = (_monolingual_spec if task == MONOLINGUAL else _parallel_spec)(data, keep, seed, where)
    spec.accept_language_mismatch = accept
    return spec


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
        given = fields.language_weights(data["ratios"], listed, f"{where}.ratios", "ratio")
        ratios = {lang: given[lang] / sum(given[k] for k in sources) for lang in sources}
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
    """The raw text of an ALMA stage as a datasets.Dataset, plus its manifest."""
    spec = parse_spec(recipe)
    if recipe.task == MONOLINGUAL:
        return load_monolingual(spec, recipe.train.max_length)
    return load_parallel_text(spec)


def texts(dataset):
    """Raw strings of the training text (for training a tokenizer)."""
    columns = ["text"] if "text" in dataset.column_names else ["input", "output", "split"]
    for batch in dataset.select_columns(columns).iter(batch_size=BATCH):
        if "text" in batch:
            yield from batch["text"]
        else:
            for split, source, target in zip(batch["split"], batch["input"], batch["output"]):
                if split == "train":
                    yield source
                    yield target


def tokenize(dataset, tokenizer, recipe, writer) -> dict:
    """Write the examples the trainer packs into ``writer`` (a StoreWriter): blocks (stage 1) or translation
    examples (stage 2); return their statistics."""
    spec = parse_spec(recipe)
    if recipe.task == MONOLINGUAL:
        return tokenize_monolingual(dataset, tokenizer, spec, recipe.train.max_length, writer)
    return encode_split(dataset, tokenizer, recipe.train.max_length, "train",
                        lambda ids, plen, _: writer.add(ids, plen))


# ----------------------------------------------------------------------------------------------------------
# Stage 1: monolingual text
# ----------------------------------------------------------------------------------------------------------


def load_monolingual(spec: MonolingualSpec, max_length: int):
    """Every language's documents -> (Dataset[text, lang] memory-mapped from disk, manifest): the shared corpus
    builder, with Hub corpora read up to about the language's share of the budget (:data:`CHARS_PER_TOKEN`)."""
    from xllama.data.corpus import build_corpus

    block = spec.block_size or max_length
    hub_chars = {}
    if spec.ratios is not None:  # temperature sampling needs the corpus sizes: bounded by max_documents only
        for lang in spec.languages:
            per_token = CHARS_PER_TOKEN.get(get_language(lang).script, DEFAULT_CHARS_PER_TOKEN)
            hub_chars[lang] = int((spec.ratios[lang] * spec.token_budget + block) * per_token)
    dataset, manifest = build_corpus(spec.sources, spec.text_field, spec.max_documents, hub_chars,
                                     spec.accept_language_mismatch)
    sampling = {"ratios": spec.ratios} if spec.ratios is not None else {"temperature": spec.temperature}
    return dataset, with_sections(manifest, task=MONOLINGUAL, token_budget=spec.token_budget, block_size=block,
                                  sampling=sampling, seed=spec.seed)


def language_shares(spec: MonolingualSpec, tokens: dict[str, int]) -> dict[str, float]:
    """Each language's share of the budget: the fixed ratios, or tokens^(1/T) normalised (temperature)."""
    if spec.ratios is not None:
        return dict(spec.ratios)
    return shares_by_size({lang: tokens[lang] for lang in spec.languages}, spec.temperature)


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

    from xllama.data.tokenize import tokenize_documents
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
        tokens = tokenize_documents(dataset, tokenizer, spec.languages, scratch, dtype, BATCH)
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


def _mix_spec(spec: ParallelSpec, pairs: dict, sizes: dict, guard: list[str] | None, hub_split: str) -> MixSpec:
    """The mixer's spec for ALMA's pairs: no instructions, no length filters (ALMA's pairs are curated); no
    guard at all with ``guard=None`` (validation pairs)."""
    languages = sorted({lang for pair in pairs for lang in pair.split("-") if lang != "en"})
    return MixSpec(mix="custom", languages=languages, parallel=pairs, guard=guard or [],
                   guard_enabled=guard is not None, parallel_sizes=sizes, directions=spec.directions,
                   seed=spec.seed, max_length=None, max_length_ratio=None, hub_split=hub_split,
                   accept_language_mismatch=spec.accept_language_mismatch)


def load_parallel_text(spec: ParallelSpec):
    """Training and validation pairs -> (Dataset[instruction, input, output, source, lang, direction, split],
    manifest): the mixer's rows (one per direction of a pair) with a ``split`` column, train then valid. The
    manifest is the training mix's, with the validation mix's under ``valid``."""
    import pyarrow as pa
    from datasets import concatenate_datasets

    for pair, locations in spec.valid.items():
        for location in locations:
            if not location.startswith("hf:") and Path(location).expanduser().is_dir():
                raise XllamaError(f"data.valid.{pair}: {location} is a folder; give the validation file itself "
                                  f"(e.g. {Path(location) / f'valid.{pair}.json'}), so that training pairs are "
                                  "never taken for validation ones")
    train, manifest = build_mix(_mix_spec(spec, spec.pairs, spec.sizes, spec.guard, "train"))
    built, valid_manifest = [train], None
    if spec.valid:
        valid, valid_manifest = build_mix(_mix_spec(spec, spec.valid, spec.valid_sizes, None, "validation"))
        built.append(valid)
        overlap = _shared_pairs(train, valid)
        if overlap:
            log.warning("%d of %d validation rows also occur in the training pairs", overlap, len(valid))
    dataset = concatenate_datasets([part.add_column("split", pa.repeat(pa.scalar(split), len(part)))
                                    for part, split in zip(built, ("train", "valid"))])
    weakref.finalize(dataset, tuple, built)  # the built mixes (and so their files) live as long as the dataset
    return dataset, with_sections(manifest, task=PARALLEL, columns=[*manifest["columns"], "split"],
                                  valid_examples=len(dataset) - len(train), valid=valid_manifest)


def _shared_pairs(train, valid) -> int:
    """How many validation rows (direction, source, target; normalised) are also training rows."""
    rows = lambda d: d.select_columns(["direction", "input", "output"]).iter(batch_size=BATCH)  # noqa: E731
    keys = lambda b: zip(b["direction"], map(normalize, b["input"]), map(normalize, b["output"]))  # noqa: E731
    held = {key for batch in rows(valid) for key in keys(batch)}
    return len(held & {key for batch in rows(train) for key in keys(batch) if key in held})


def encode_split(dataset, tokenizer, max_length: int, split: str, emit) -> dict:
    """Tokenise the rows of ``split`` in ALMA's prompt, batch by batch: ``emit(input_ids, prompt_lengths,
    directions)`` for each batch; return the statistics."""
    from xllama.data.tokenize import encode_prompted
    from xllama.prompts import alma_prompt

    stats = {"task": PARALLEL, "split": split, "examples": 0, "dropped_too_long": 0, "boundary_merged": 0,
             "target_tokens": 0}
    rows = 0
    for batch in _stage2_rows(dataset):
        index = [i for i, s in enumerate(batch["split"]) if s == split]
        rows += len(index)
        directions = [batch["direction"][i] for i in index]
        prompts = [alma_prompt(*d.split("-"), batch["input"][i]) for d, i in zip(directions, index)]
        ids, plen, kept, counts = encode_prompted(tokenizer, prompts, [batch["output"][i] for i in index], max_length)
        for key, value in counts.items():
            stats[key] += value
        stats["target_tokens"] += sum(len(x) - p for x, p in zip(ids, plen))
        if ids:
            emit(ids, plen, [directions[k] for k in kept])
    if not rows:
        raise XllamaError(f"the run's text has no {split} pairs")
    if not stats["examples"]:
        raise XllamaError(f"no {split} example fits in train.max_length={max_length} tokens")
    if stats["dropped_too_long"]:
        log.warning("%d %s examples longer than %d tokens were dropped", stats["dropped_too_long"], split, max_length)
    return stats


def _stage2_rows(dataset):
    """Batches of (direction, input, output, split), also from the text of runs made before stage 2's pairs
    were an xllama mix (columns src, tgt, source, target, split), so that those runs still resume."""
    if "direction" in dataset.column_names:
        yield from dataset.select_columns(["direction", "input", "output", "split"]).iter(batch_size=BATCH)
        return
    for b in dataset.select_columns(["src", "tgt", "source", "target", "split"]).iter(batch_size=BATCH):
        yield {"direction": [f"{x}-{y}" for x, y in zip(b["src"], b["tgt"])], "input": b["source"],
               "output": b["target"], "split": b["split"]}


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
