"""Tokenisation with response-only loss masks: the data stage's hot path.

Prompt and response are tokenised separately (in large batches, by the Rust fast tokenizer) and concatenated,
so the prompt tokens are exactly what the model sees at inference time, when the prompt is tokenised alone.
We store ``input_ids`` and ``prompt_length`` rather than a full ``labels`` column: labels are derived at batch
time (``-100`` for the prompt), which halves the storage and the work.
"""

from __future__ import annotations

import functools
import gc
import string
import weakref
from dataclasses import dataclass
from itertools import chain

import numpy as np

from xllama.errors import XllamaError
from xllama.prompts import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, alpaca_prompt

IGNORE_INDEX = -100


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated, "dropped_no_target": self.dropped_no_target}


def _without_gc(encode):
    """Run ``encode`` with Python's cyclic garbage collector paused (restored after, as it was). Tokenising a
    batch allocates a list per text and tens of thousands per batch, none of them in a reference cycle, and every
    few hundred allocations the collector would scan them, and every object the caller holds (a caller keeping
    100,000 encoded examples, a training process its model): with the collector running, ``encode_pairs`` on
    100,000 examples took 14.5-16.0 s instead of 12.5 (``benchmarks/data/RESULTS.md``). Reference counting
    frees everything as usual."""

    @functools.wraps(encode)
    def wrapped(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return encode(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapped


def _fast_backend(tokenizer):
    """The Rust ``tokenizers.Tokenizer`` behind a fast tokenizer, with padding and truncation off; else None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not (getattr(tokenizer, "is_fast", False) and hasattr(backend, "encode_batch_fast")):
        return None
    if backend.padding is not None or backend.truncation is not None:
        backend.no_padding()  # left on the backend by an earlier tokenizer(..., padding=...) call
        backend.no_truncation()
    return backend


@_without_gc
def batch_encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids for many texts. Uses the Rust backend's ``encode_batch_fast`` (no offsets) where available:
    about twice as fast as ``tokenizer(texts)`` with identical ids."""
    backend = _fast_backend(tokenizer)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]


# --- Alpaca prompts without re-tokenising the template -------------------------------------------------------
# Half the tokens of an Alpaca prompt are its fixed template (33 of 66 on the x-LLaMA zh mix). A prompt is
# head + core + tail, where the head is the preamble up to "### Instruction:\n", the core is the instruction
# (with "\n\n### Input:\n" and the input when there is one) and the tail is "\n\n### Response:". When the
# tokenizer's pre-tokenisation splits at the newlines around the core, the prompt's ids are exactly
# ids(head) + ids(core) + ids(tail), so only the core is tokenised. A GPT-2-style byte-level BPE (SmolLM2, GPT-2,
# the BPE of xllama.modeling) does split there whenever the core starts and ends with a character that is
# neither whitespace nor an invisible format character. Each tokenizer is checked on probe prompts and not
# spliced at all if one differs (the verdict is kept per tokenizer object until its normaliser, pre-tokenizer,
# post-processor or added tokens change); a prompt that is not an Alpaca prompt, or whose core starts or ends
# with such a character, is tokenised whole.

def _literals(template: str) -> list[str]:
    return [literal for literal, _, _, _ in string.Formatter().parse(template)]


_HEAD_INPUT, _, _TAIL = _literals(ALPACA_WITH_INPUT)
_HEAD_NO_INPUT, _TAIL_NO_INPUT = _literals(ALPACA_NO_INPUT)
assert _TAIL == _TAIL_NO_INPUT and not _HEAD_INPUT.startswith(_HEAD_NO_INPUT)
assert not _HEAD_NO_INPUT.startswith(_HEAD_INPUT)
# The characters the core may not start or end with: whitespace, and format characters that some regex
# engines' \s or normalisers treat as space (U+180E was whitespace before Unicode 6.3).
_UNSAFE_EDGE = frozenset("\u180e\u200b\u200c\u200d\u2060\ufeff")
# Probe fields: the classes of characters a core can start or end with (letters of several scripts, digits,
# punctuation, apostrophes, emoji, an added special token), and inner newlines and spaces.
_PROBES = (
    ("Write a poem about the sea.", ""), ("hello", "world"), ("42", "3.14 is pi"), ("'s and 'll", "don't"),
    ('"Quoted"', "(parenthesised)"), ("-dash-", "#tag"), ("你好，世界。", "日本語のテキスト"),
    ("😀 smile 🎉", "émigré café"), ("Привет, мир!", "नमस्ते मित्र"), ("مرحبا", "a\n\nb\n c\t d"),
    ("x  y", "…"), ("<|endoftext|>", "end <|endoftext|>"), ("Ünïcödé", "1\n2"), ("?", "!"),
)


@dataclass(frozen=True)
class _AlpacaSplicer:
    heads: tuple[tuple[str, list[int]], ...]  # (head text, its ids with any special tokens the tokenizer prepends)
    tail_ids: list[int]  # the tail's ids with any special tokens the tokenizer appends

    @classmethod
    def for_tokenizer(cls, backend) -> _AlpacaSplicer | None:
        """The splicer for this Rust tokenizer, or None when splicing would not reproduce its ids."""
        added = backend.get_added_tokens_decoder().values()
        if any(t.lstrip or t.rstrip or "\n" in t.content for t in added):
            return None  # an added token that eats whitespace or spans a newline can cross the template's edges
        plain = backend.encode("x", add_special_tokens=False).ids
        special = backend.encode("x", add_special_tokens=True).ids
        start = next((k for k in range(len(special) - len(plain) + 1) if special[k:k + len(plain)] == plain), None)
        if start is None:
            return None
        before, after = special[:start], special[start + len(plain):]
        literals = backend.encode_batch_fast([_HEAD_INPUT, _HEAD_NO_INPUT, _TAIL], add_special_tokens=False)
        ids = [e.ids for e in literals]
        splicer = cls(((_HEAD_INPUT, before + ids[0]), (_HEAD_NO_INPUT, before + ids[1])), ids[2] + after)
        prompts = [alpaca_prompt(i, x) for i, x in _PROBES]
        whole = [e.ids for e in backend.encode_batch_fast(prompts, add_special_tokens=True)]
        return splicer if splicer.encode(backend, prompts)[0] == whole else None

    def split(self, prompt: str) -> tuple[list[int], str] | None:
        """(head ids, core) of an Alpaca prompt whose core can be spliced; None for any other prompt."""
        if not prompt.endswith(_TAIL):
            return None
        for head, head_ids in self.heads:
            if prompt.startswith(head):
                core = prompt[len(head):len(prompt) - len(_TAIL)]
                if core and _safe_edge(core[0]) and _safe_edge(core[-1]):
                    return head_ids, core
                return None
        return None

    def encode(self, backend, prompts: list[str], responses: list[str] = ()) -> tuple[list[list[int]], list]:
        """(ids of each prompt, with special tokens; ids of each response, without). Cores and responses are
        tokenised in one call; prompts that cannot be spliced are tokenised whole."""
        splits = [self.split(p) for p in prompts]
        cores = [s[1] for s in splits if s is not None]
        encoded = backend.encode_batch_fast(cores + list(responses), add_special_tokens=False)
        core_ids = iter(encoded[:len(cores)])
        whole = [p for p, s in zip(prompts, splits) if s is None]
        whole_ids = iter(backend.encode_batch_fast(whole, add_special_tokens=True) if whole else ())
        tail = self.tail_ids
        prompt_ids = [next(whole_ids).ids if s is None else s[0] + next(core_ids).ids + tail for s in splits]
        return prompt_ids, [e.ids for e in encoded[len(cores):]]


def _safe_edge(char: str) -> bool:
    return not char.isspace() and char not in _UNSAFE_EDGE


_SPLICERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (backend, fingerprint, splicer)


def _splicer_for(tokenizer, backend) -> _AlpacaSplicer | None:
    """``_AlpacaSplicer.for_tokenizer``, probed once per tokenizer (probing costs about 1 ms, checking the
    fingerprint 30 us) and again whenever anything that decides how a prompt is split has changed."""
    parts = (backend.normalizer, backend.pre_tokenizer, backend.post_processor)
    added = backend.get_added_tokens_decoder()
    fingerprint = (tuple(p.__getstate__() if p is not None else None for p in parts),
                   tuple((i, t.content, t.lstrip, t.rstrip, t.single_word, t.normalized) for i, t in added.items()))
    cached = _SPLICERS.get(tokenizer)
    if cached is not None and cached[0] is backend and cached[1] == fingerprint:
        return cached[2]
    splicer = _AlpacaSplicer.for_tokenizer(backend)
    _SPLICERS[tokenizer] = (backend, fingerprint, splicer)
    return splicer


@_without_gc
def encode_pairs(tokenizer, prompts: list[str], responses: list[str], max_length: int, add_eos: bool = True,
                 *, splice: bool = True):
    """Encode (prompt, response) pairs -> (input_ids lists, prompt lengths, stats).

    The response is followed by EOS so the model learns to stop. Examples longer than ``max_length`` keep their
    prompt and lose the end of the response; those whose prompt leaves no room for a target token are dropped.
    Alpaca prompts are spliced from the template's pre-computed ids where that gives the same ids as tokenising
    the prompt whole (see ``_AlpacaSplicer``); ``splice=False`` always tokenises whole prompts.
    """
    backend = _fast_backend(tokenizer)
    splicer = _splicer_for(tokenizer, backend) if splice and backend is not None else None
    if splicer is None:
        enc_p = batch_encode(tokenizer, prompts, add_special_tokens=True)
        enc_r = batch_encode(tokenizer, responses, add_special_tokens=False)
    else:
        enc_p, enc_r = splicer.encode(backend, prompts, responses)
    eos = [tokenizer.eos_token_id] if add_eos else []
    ids_out, plen_out = [], []
    stats = TokenizeStats()
    for p, r in zip(enc_p, enc_r):
        ids = p + r + eos
        if len(ids) > max_length:
            stats.truncated += 1
            ids = ids[:max_length]
        if len(ids) <= len(p):
            stats.dropped_no_target += 1
            continue
        ids_out.append(ids)
        plen_out.append(len(p))
    stats.examples = len(ids_out)
    return ids_out, plen_out, stats


def tokenize_instructions(dataset, tokenizer, max_length: int, writer, batch_size: int = 2000) -> dict:
    """Tokenise an instruction mix (columns instruction/input/output) straight into a token store.

    The text is read ``batch_size`` rows at a time (a memory-mapped Dataset stays on disk) and each batch's
    input_ids and prompt lengths go to ``writer`` (:class:`xllama.train.store.StoreWriter`), so memory does not
    grow with the data. Returns the stats dict. Raises when nothing trainable is left.
    """
    from concurrent.futures import ThreadPoolExecutor

    totals = TokenizeStats()

    def write(encoded) -> None:
        ids, plen, stats = encoded
        writer.add(ids, plen)
        totals.examples += stats.examples
        totals.truncated += stats.truncated
        totals.dropped_no_target += stats.dropped_no_target

    # One batch ahead: the Rust tokenizer (which releases the GIL) encodes batch k+1 in a worker thread while
    # this thread builds the next prompts and writes batch k, so the cores do not wait for the Python parts.
    pending = None
    with ThreadPoolExecutor(1, thread_name_prefix="xllama-tokenize") as pool:
        for batch in dataset.select_columns(["instruction", "input", "output"]).iter(batch_size=batch_size):
            prompts = [alpaca_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"])]
            submitted = pool.submit(encode_pairs, tokenizer, prompts, batch["output"], max_length)
            if pending is not None:
                write(pending.result())
            pending = submitted
        if pending is not None:
            write(pending.result())
    if totals.examples == 0:
        raise XllamaError(
            f"the dataset has no trainable tokens: all {len(dataset)} examples were empty or had a prompt of "
            f"{max_length} tokens or more (max_length={max_length})"
        )
    return totals.as_dict()


def labels_for(input_ids: np.ndarray, prompt_length: int) -> np.ndarray:
    labels = input_ids.copy()
    labels[:prompt_length] = IGNORE_INDEX
    return labels


@_without_gc
def encode_prompted(tokenizer, prompts: list[str], targets: list[str], max_length: int, separator: str = " "):
    """(prompt, target) pairs tokenised whole, as ``prompt + separator + target`` then EOS -> (input_ids lists,
    prompt lengths, kept indices, stats). The prompt length is that of the prompt tokenised alone (as at
    inference), checked to be a prefix of the whole ("boundary_merged" counts the pairs where the tokenizer merged
    a token across the boundary; their prompt ends where the two first differ). Examples longer than
    ``max_length`` are dropped, not cut: a truncated target without its EOS would teach the model to stop short.
    (ALMA's prompts: stage 2 and CPO.)"""
    eos = tokenizer.eos_token_id
    enc_prompt = batch_encode(tokenizer, prompts, add_special_tokens=True)
    enc_full = batch_encode(tokenizer, [p + separator + t for p, t in zip(prompts, targets)], add_special_tokens=True)
    ids_out, plen_out, kept = [], [], []
    stats = {"examples": 0, "dropped_too_long": 0, "boundary_merged": 0}
    for i, (p, full) in enumerate(zip(enc_prompt, enc_full)):
        n = len(p)
        if full[:n] != p:
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


def tokenize_documents(dataset, tokenizer, languages: list[str], folder, dtype, batch_size: int = 2000) -> dict:
    """A corpus (columns text, lang) -> one token file per language, ``folder/<lang>.bin`` (raw ``dtype``
    ids: each document as the tokenizer encodes it, BOS included if it adds one, then EOS), written batch by
    batch; returns the tokens per language. A language not in ``languages`` is an error."""
    from pathlib import Path

    from tqdm.auto import tqdm

    eos, folder = tokenizer.eos_token_id, Path(folder)
    tokens = dict.fromkeys(languages, 0)
    files = {lang: open(folder / f"{lang}.bin", "wb") for lang in languages}
    try:
        with tqdm(total=len(dataset), desc="tokenising documents", unit="doc") as bar:
            for batch in dataset.select_columns(["text", "lang"]).iter(batch_size=batch_size):
                by_lang: dict[str, list] = {}
                for lang, ids in zip(batch["lang"], batch_encode(tokenizer, batch["text"], add_special_tokens=True)):
                    if lang not in files:
                        raise XllamaError(f"the corpus has language {lang!r}, which is not one of "
                                          f"{', '.join(languages)}; rebuild the run's data (a new --out)")
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
