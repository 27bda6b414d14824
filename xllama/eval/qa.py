"""Question answering: XQuAD / MLQA, zero-shot, the context and question in the Alpaca prompt, greedy.

The model's answer is the first line it generates; it is scored by ``xllama.eval.qa_metrics.score_qa`` with
the three metrics (SQuAD v1.1 EM/F1, MLQA EM/F1, x-LLM's "contains"). Writes, under ``out``:
``qa_<data>/<lang>.jsonl`` (id, question, gold answers, prediction) and ``results_qa_<data>.json``.
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
) -> dict:
    """Answer every question of ``data`` in each language with one model, score, write predictions and
    results; returns the results record."""
    from xllama.data.evalsets import load_squad
    from xllama.eval.generate import decoding_settings, eos_token_ids, generate, load_for_generation
    from xllama.eval.qa_metrics import score_qa
    from xllama.eval.translation import data_slug, default_out_dir, generation_record, save_results
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

    if model is None or tokenizer is None:
        model, tokenizer = load_for_generation(model_spec, dtype=dtype, device=device)
    out = Path(out) if out is not None else default_out_dir(model_spec)
    name = data_slug(data)
    settings = decoding_settings(max_new_tokens, 1, True, eos_token_ids(model, tokenizer))
    results_path = out / f"results_qa_{name}.json"
    record = {
        "task": "qa", "model": str(model_spec), "data": data, "prompt": QA_PROMPT_NAME,
        "decoding": generation_record(model, settings, batch_tokens, batch_size),
        "scores": {}, "signatures": {},
        "extra": {"limit": limit, "split": None, "prompt_template": qa_prompt("{context}", "{question}"),
                  "outputs": {}, "results_file": str(results_path)},
    }
    for lang in languages:
        examples = sets[lang]
        prompts = [qa_prompt(ex.context, ex.question) for ex in examples]
        predictions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               batch_tokens=batch_tokens, num_beams=1, stop_at_newline=True, progress=progress,
                               cache=out / "cache" if cache else None, desc=f"qa {lang}")
        pred_path = out / f"qa_{name}" / f"{lang}.jsonl"
        write_jsonl(pred_path, ({"id": ex.id, "question": ex.question, "answers": ex.answers, "prediction": p}
                                for ex, p in zip(examples, predictions)))
        scores = score_qa(predictions, [ex.answers for ex in examples], lang)
        record["scores"][lang] = {k: v if k == "n" else float(v) for k, v in scores.items()}
        record["signatures"][lang] = qa_signatures(lang)
        record["extra"]["outputs"][lang] = str(pred_path.relative_to(out))
        logger.info("%s qa %s: %s", model_spec, lang,
                    ", ".join(f"{k} {v:.2f}" for k, v in record["scores"][lang].items() if k != "n"))
        save_results(results_path, record)
    return record
