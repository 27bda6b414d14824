"""Tokenisation with response-only loss masks: the data stage's hot path.

Prompt and response are tokenised separately (in large batches, by the Rust fast tokenizer) and concatenated,
so the prompt tokens are exactly what the model sees at inference time, when the prompt is tokenised alone.
We store ``input_ids`` and ``prompt_length`` rather than a full ``labels`` column: labels are derived at batch
time (``-100`` for the prompt), which halves the storage and the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xllama.errors import XllamaError
from xllama.prompts import alpaca_prompt

IGNORE_INDEX = -100


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped_no_target: int = 0

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated, "dropped_no_target": self.dropped_no_target}


def batch_encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids for many texts. Uses the Rust backend's ``encode_batch_fast`` (no offsets) where available:
    about twice as fast as ``tokenizer(texts)`` with identical ids."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and hasattr(backend, "encode_batch_fast"):
        if backend.padding is not None or backend.truncation is not None:
            backend.no_padding()  # left on the backend by an earlier tokenizer(..., padding=...) call
            backend.no_truncation()
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]


def encode_pairs(tokenizer, prompts: list[str], responses: list[str], max_length: int, add_eos: bool = True):
    """Encode (prompt, response) pairs -> (input_ids lists, prompt lengths, stats).

    The response is followed by EOS so the model learns to stop. Examples longer than ``max_length`` keep their
    prompt and lose the end of the response; those whose prompt leaves no room for a target token are dropped.
    """
    enc_p = batch_encode(tokenizer, prompts, add_special_tokens=True)
    enc_r = batch_encode(tokenizer, responses, add_special_tokens=False)
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


def tokenize_instructions(dataset, tokenizer, max_length: int, batch_size: int = 2000, num_proc: int | None = None):
    """Tokenise an instruction mix (columns instruction/input/output) into input_ids + prompt_length.

    Returns (tokenised datasets.Dataset, stats dict). Raises when nothing trainable is left.
    """
    totals = TokenizeStats()

    def _map(batch):
        prompts = [alpaca_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"])]
        ids, plen, stats = encode_pairs(tokenizer, prompts, batch["output"], max_length)
        totals.truncated += stats.truncated
        totals.dropped_no_target += stats.dropped_no_target
        return {"input_ids": ids, "prompt_length": plen}

    out = dataset.map(
        _map,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        desc="tokenising",
        load_from_cache_file=False,
    )
    totals.examples = len(out)
    if totals.examples == 0:
        raise XllamaError(
            f"the dataset has no trainable tokens: all {len(dataset)} examples were empty or had a prompt of "
            f"{max_length} tokens or more (max_length={max_length})"
        )
    return out, totals.as_dict()


def labels_for(input_ids: np.ndarray, prompt_length: int) -> np.ndarray:
    labels = input_ids.copy()
    labels[:prompt_length] = IGNORE_INDEX
    return labels
