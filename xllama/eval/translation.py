"""Translation evaluation: generate translations for FLORES / WMT-JSON / aligned text files and score them.

``evaluate_translation`` runs one model over one or more directions: prompts come from
``xllama.prompts.translation_prompt`` (the x-LLM Alpaca prompt or ALMA's), the answer is the first line the
model generates, scores come from ``xllama.eval.metrics.score_translation``. It writes, under ``out``:

- ``translation_<data>_<prompt>[_<split>][_beam<k>][_limit<n>]/<src>-<tgt>.txt``: the hypotheses, one per line
  (``xllama eval score`` input);
- ``results_`` + the same name + ``.json``: scores, metric signatures, model, data, prompt and decoding settings
  (``xllama.eval.results`` schema; ``xllama eval report`` reads it). Directions evaluated earlier with the same
  model and settings are kept, so pairs can be added one run at a time; a file of another run (other model or
  decoding settings) is refused, never replaced silently (``overwrite=True`` replaces it);
- ``cache/``: generated outputs per batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from xllama.errors import XllamaError
from xllama.io import atomic_write_text
from xllama.languages import parse_pair

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("bleu", "chrf", "off_target")
DEFAULT_MAX_NEW_TOKENS = 256


# ---------------------------------------------------------------------------------------------- data


def load_translation_data(data: str, src: str, tgt: str, split: str = "devtest") -> tuple[list[str], list[str]]:
    """Source and reference sentences of one direction. ``data`` is one of:

    - ``flores101`` / ``flores200`` (Hub, or $XLLAMA_DATA/<name>) or a local FLORES folder (``<code>.devtest``);
    - a WMT/ALMA JSON(L) file of ``{"translation": {"zh": ..., "en": ...}}`` records;
    - a pattern of two aligned text files with ``{lang}``, e.g. ``wmt22/test.zh-en.{lang}``.

    Paths may use ``{src}``, ``{tgt}`` and ``{xx}`` (the non-English side), e.g. ``alma/valid.{xx}-en.json``.
    """
    from xllama.data.evalsets import FLORES_HUB, load_aligned_text, load_flores_pair, load_wmt_json

    if data in FLORES_HUB:
        return load_flores_pair(data, src, tgt, split)
    xx = tgt if src == "en" else src
    fill = {"src": src, "tgt": tgt, "xx": xx}
    try:
        if "{lang}" in data:
            return load_aligned_text(data.format(lang=src, **fill), data.format(lang=tgt, **fill))
        path = Path(data.format(**fill))
    except (KeyError, IndexError, ValueError) as e:
        raise XllamaError(f"data pattern {data!r}: unknown placeholder {e}; use {{src}}, {{tgt}}, {{xx}}, {{lang}}")
    if path.is_dir():
        return load_flores_pair(str(path), src, tgt, split)
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        return load_wmt_json(path, src, tgt)
    if path.is_file():
        raise XllamaError(f"{path}: a single text file holds one side only; give a pattern with {{lang}} "
                          f"(e.g. {path.with_suffix('')}.{{lang}}) for aligned text files")
    raise XllamaError(f"translation data {data!r} not found: expected flores101, flores200, a FLORES folder, a "
                      "WMT JSON(L) file or a text-file pattern with {lang}")


# ---------------------------------------------------------------------------------------------- runner


def evaluate_translation(
    model_spec: str,
    data: str = "flores101",
    pairs: str | Sequence[str] = ("en-zh",),
    prompt: str = "alpaca",
    num_beams: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    out: str | os.PathLike | None = None,
    split: str = "devtest",
    cache: bool = True,
    model=None,
    tokenizer=None,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
    metric_options: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Translate every direction in ``pairs`` with one model, score it, write outputs and results; returns the
    results record. ``model``/``tokenizer`` may be passed already loaded (``model_spec`` then only names it)."""
    from xllama.distributed import is_main_process, rank_and_world
    from xllama.eval.generate import (decoding_settings, eos_token_ids, generate, generation_record,
                                      load_for_generation)
    from xllama.eval.metrics import check_metric_packages, parse_metrics, score_translation
    from xllama.eval.results import (check_results_file, default_run_dir, model_identity, result_stem,
                                     run_identity, save_results)
    from xllama.modeling import resolve_model
    from xllama.prompts import PROMPT_STYLES, translation_prompt

    if model is None:
        resolve_model(model_spec)  # a mistyped path fails now, before any data is read
    directions = [parse_pair(p) for p in (pairs.split(",") if isinstance(pairs, str) else pairs) if p.strip()]
    if not directions:
        raise XllamaError(f"no translation direction given in {pairs!r}")
    if prompt not in PROMPT_STYLES:
        raise XllamaError(f"unknown prompt style {prompt!r}; expected one of {', '.join(PROMPT_STYLES)}")
    if limit is not None and limit < 1:
        raise XllamaError(f"--limit must be a positive number of sentences (got {limit})")
    metric_names = parse_metrics(metrics)
    check_metric_packages(metric_names)  # a missing lingua/COMET fails now, not after generating
    # Read every direction's data before loading the model: a bad path fails in a second, not after a minute.
    corpora = {}
    for src, tgt in directions:
        sources, refs = load_translation_data(data, src, tgt, split)
        if not sources:
            raise XllamaError(f"{data}: no sentences for {src}-{tgt}")
        corpora[(src, tgt)] = (sources[:limit], refs[:limit])
    # Where results go: the name carries data, prompt, split, beams and limit; a file holding another run's
    # results is refused before the model is loaded (and again, with the full decoding settings, after).
    out = Path(out) if out is not None else default_run_dir(model_spec)
    name = result_stem("translation", data, prompt, split, limit, num_beams)
    results_path = out / f"results_{name}.json"
    known = {"task": "translation", "model": model_identity(model_spec), "data": data, "prompt": prompt,
             "split": split, "limit": limit, "decoding.num_beams": num_beams, "decoding.max_new_tokens": max_new_tokens}
    check_results_file(results_path, known, overwrite)

    if model is None or tokenizer is None:
        model, tokenizer = load_for_generation(model_spec, dtype=dtype, device=device)
    settings = decoding_settings(max_new_tokens, num_beams, True, eos_token_ids(model, tokenizer))
    record = {
        "task": "translation", "model": str(model_spec), "data": data, "prompt": prompt,
        "decoding": generation_record(model, settings, batch_tokens, batch_size),
        "scores": {}, "signatures": {},
        "extra": {"model_path": model_identity(model_spec), "split": split, "limit": limit,
                  "metrics": list(metric_names),
                  "prompt_template": translation_prompt(prompt, *directions[0], "{text}"), "outputs": {},
                  "processes": rank_and_world()[1]},
    }
    record["extra"]["results_file"] = str(results_path)
    check_results_file(results_path, run_identity(record), overwrite)
    for src, tgt in directions:
        pair = f"{src}-{tgt}"
        sources, refs = corpora[(src, tgt)]
        prompts = [translation_prompt(prompt, src, tgt, s) for s in sources]
        hyps = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        batch_tokens=batch_tokens, num_beams=num_beams, stop_at_newline=True, progress=progress,
                        cache=out / "cache" if cache else None, desc=f"{pair}")
        if not is_main_process():
            continue  # under `accelerate launch` every process generates a shard; rank 0 scores and writes
        hyp_path = out / name / f"{pair}.txt"
        atomic_write_text(hyp_path, "".join(h.replace("\n", " ") + "\n" for h in hyps))
        scored = score_translation(hyps, refs, tgt, srcs=sources, metrics=metric_names, progress=progress,
                                   **(metric_options or {}))
        signature = scored.pop("signature", {})
        record["scores"][pair] = {k: v if k == "n" else float(v) for k, v in scored.items() if v is not None}
        record["signatures"][pair] = signature
        record["extra"]["outputs"][pair] = str(hyp_path.relative_to(out))
        logger.info("%s %s: %s", model_spec, pair,
                    ", ".join(f"{k} {v:.2f}" for k, v in record["scores"][pair].items() if k != "n"))
        save_results(results_path, record, overwrite)  # after every direction: an interrupted run keeps those
    return record
