"""Question answering: XQuAD / MLQA, zero-shot, the context and question in the Alpaca prompt, greedy.

The model's answer is the first line it generates; it is scored by ``xllama.eval.qa_metrics.score_qa`` with
the three metrics (SQuAD v1.1 EM/F1, MLQA EM/F1, x-LLM's "contains"). Writes, under ``out``:
``qa_<data>[_limit<n>]/<lang>.jsonl`` (id, question, gold answers, prediction) and ``results_`` + the same
name + ``.json`` (a file of another run is refused, never replaced silently; ``overwrite=True`` replaces it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from xllama.errors import XllamaError
from xllama.io import write_jsonl
from xllama.languages import parse_languages

logger = logging.getLogger(__name__)

# The one QA instruction of xllama (English, like the x-LLM paper's zero-shot prompts): asks for the short
# span so that exact match and F1 stay meaningful, while "contains" also credits an answer in a sentence.
QA_INSTRUCTION = (
    "Answer the question based on the passage. Reply with a short answer taken from the passage."
)
QA_INPUT = "Passage: {context}\nQuestion: {question}"
QA_PROMPT_NAME = "alpaca"  # the prompt family; the exact template is stored in results["extra"]
DEFAULT_MAX_NEW_TOKENS = 64


def qa_prompt(context: str, question: str) -> str:
    """The zero-shot QA prompt: the Alpaca prompt with QA_INSTRUCTION and the passage and question as input."""
    from xllama.prompts import alpaca_prompt

    return alpaca_prompt(QA_INSTRUCTION, QA_INPUT.format(context=context.strip(), question=question.strip()))


def qa_signatures(lang: str) -> dict[str, str]:
    """Which normalisation each QA metric used (qa_metrics' docstring has the details), per metric."""
    from xllama import __version__

    version = f"xllama:{__version__}"
    return {"squad_em": f"squad-v1.1|{version}", "squad_f1": f"squad-v1.1|{version}",
            "mlqa_em": f"mlqa|lang:{lang}|{version}", "mlqa_f1": f"mlqa|lang:{lang}|{version}",
            "contains": f"x-llm-contains|{version}"}


def lm_eval_signatures(task: str, lm_eval_prompt: bool) -> dict[str, str]:
    """lm-eval's exact_match / f1 for ``task``: computed as its process_results does, x 100 (it prints 0-1);
    ``prompt:lm-eval`` when the answers came from its prompt and stopping too, so the number is its."""
    from xllama import __version__

    how = "first-answer|squad-v2" if task.startswith("xquad") else "max-over-answers|mlqa-lm-eval"
    prompt = "lm-eval" if lm_eval_prompt else "xllama (not lm-eval's: compare with care)"
    base = f"lm-eval:{task}|{how}|prompt:{prompt}|scale:100|xllama:{__version__}"
    return {"exact_match": base, "f1": base}


def evaluate_qa(
    model_spec: str,
    data: str = "xquad",
    langs: str | Sequence[str] = ("zh",),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    cache: bool = True,
    model=None,
    tokenizer=None,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    prompt: str = QA_PROMPT_NAME,
) -> dict:
    """Answer every question of ``data`` in each language with one model, score, write predictions and
    results; returns the results record. ``prompt``: "alpaca" (x-LLM's) or "lm-eval" (lm-evaluation-harness's
    xquad_<lang> / mlqa_<lang>_<lang> prompt, the answer ending at the first newline as there)."""
    from xllama.data.evalsets import load_squad
    from xllama.distributed import is_main_process, rank_and_world
    from xllama.eval.generate import (decoding_settings, eos_token_ids, generate, generation_record,
                                      load_for_generation)
    from xllama.eval.qa_metrics import LM_EVAL_MLQA_LANGS, lm_eval_task, score_lm_eval_qa, score_qa
    from xllama.prompts import QA_PROMPT_STYLES, lm_eval_qa_prompt
    from xllama.eval.results import (check_results_file, default_run_dir, model_identity, result_stem,
                                     run_identity, save_results)
    from xllama.modeling import resolve_model

    if model is None:
        resolve_model(model_spec)  # a mistyped path fails now, before any data is read
    languages = parse_languages(langs)
    if limit is not None and limit < 1:
        raise XllamaError(f"--limit must be a positive number of questions (got {limit})")
    sets = {}
    for lang in languages:  # read (and validate) every file before loading the model
        examples = load_squad(data, lang)[:limit]
        unanswerable = [ex.id for ex in examples if not ex.answers]
        if unanswerable:
            raise XllamaError(f"{data} ({lang}): question {unanswerable[0]!r} has no gold answer "
                              f"({len(unanswerable)} such); SQuAD v1.1 sets answer every question")
        sets[lang] = examples
    out = Path(out) if out is not None else default_run_dir(model_spec)
    if prompt not in QA_PROMPT_STYLES:
        raise XllamaError(f"unknown QA prompt style {prompt!r}; expected one of {', '.join(QA_PROMPT_STYLES)}")
    lm_eval = prompt == "lm-eval"
    family = lm_eval_task(data, "en").split("_")[0]  # xquad or mlqa: which lm-eval task the data stands for
    if lm_eval:
        for lang in languages:  # a language lm-eval has no prompt for fails now
            lm_eval_qa_prompt("", "", lang, family)
    name = result_stem("qa", data, prompt=prompt if lm_eval else None, limit=limit)
    results_path = out / f"results_{name}.json"
    known = {"task": "qa", "model": model_identity(model_spec), "data": data, "prompt": prompt,
             "limit": limit, "decoding.max_new_tokens": max_new_tokens}
    check_results_file(results_path, known, overwrite)  # before loading the model

    if model is None or tokenizer is None:
        model, tokenizer = load_for_generation(model_spec, dtype=dtype, device=device)
    settings = decoding_settings(max_new_tokens, 1, True, eos_token_ids(model, tokenizer),
                                 skip_leading_newlines=not lm_eval)
    template = (lm_eval_qa_prompt("{context}", "{question}", languages[0], family) if lm_eval
                else qa_prompt("{context}", "{question}"))
    record = {
        "task": "qa", "model": str(model_spec), "data": data, "prompt": prompt,
        "decoding": generation_record(model, settings, batch_tokens, batch_size),
        "scores": {}, "signatures": {},
        "extra": {"model_path": model_identity(model_spec), "limit": limit, "split": None, "prompt_template": template,
                  "outputs": {}, "results_file": str(results_path), "processes": rank_and_world()[1]},
    }
    check_results_file(results_path, run_identity(record), overwrite)
    for lang in languages:
        examples = sets[lang]
        prompts = [lm_eval_qa_prompt(ex.context, ex.question, lang, family) if lm_eval
                   else qa_prompt(ex.context, ex.question) for ex in examples]
        predictions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               batch_tokens=batch_tokens, num_beams=1, stop_at_newline=True, progress=progress,
                               cache=out / "cache" if cache else None, desc=f"qa {lang}",
                               skip_leading_newlines=not lm_eval)
        if not is_main_process():
            continue  # under `accelerate launch` every process generates a shard; rank 0 scores and writes
        pred_path = out / name / f"{lang}.jsonl"
        write_jsonl(pred_path, ({"id": ex.id, "question": ex.question, "answers": ex.answers, "prediction": p}
                                for ex, p in zip(examples, predictions)))
        scores = score_qa(predictions, [ex.answers for ex in examples], lang)
        signatures = qa_signatures(lang)
        task = lm_eval_task(data, lang)
        if family == "xquad" or lang in LM_EVAL_MLQA_LANGS:  # lm-eval's own metrics, by its names, beside ours
            scores.update(score_lm_eval_qa(predictions, [ex.answers for ex in examples], task))
            signatures.update(lm_eval_signatures(task, lm_eval))
        record["scores"][lang] = {k: v if k == "n" else float(v) for k, v in scores.items()}
        record["signatures"][lang] = signatures
        record["extra"]["outputs"][lang] = str(pred_path.relative_to(out))
        logger.info("%s qa %s: %s", model_spec, lang,
                    ", ".join(f"{k} {v:.2f}" for k, v in record["scores"][lang].items() if k != "n"))
        save_results(results_path, record, overwrite)
    return record
