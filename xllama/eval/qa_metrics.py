"""Extractive-QA metrics for XQuAD/MLQA, three of them, each named for where it comes from.

- ``squad_em`` / ``squad_f1``: the official SQuAD v1.1 script (lower-case, drop ASCII punctuation, drop
  English articles a/an/the, collapse whitespace; F1 over whitespace tokens; maximum over gold answers).
- ``mlqa_em`` / ``mlqa_f1``: the official MLQA script's multilingual normalisation: every Unicode
  punctuation character (category P*) removed, each language's articles removed, whitespace tokens, except
  Chinese, which is segmented into single CJK characters plus whitespace tokens for the rest.
- ``contains``: the x-LLM paper's lenient metric for generative models that answer in a sentence: the
  example counts when a gold answer (lower-cased) is a substring of the lower-cased prediction.

All are percentages (0-100) averaged over examples.
"""

from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata
from collections import Counter
from typing import Callable, Sequence

from xllama.errors import XllamaError
from xllama.languages import get_language

# ----------------------------------------------------------------------------------------------- SQuAD v1.1

_SQUAD_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's normalize_answer: lower, strip ASCII punctuation, drop a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------------ MLQA



@functools.lru_cache(maxsize=1)
def unicode_punctuation() -> frozenset[str]:
    """Every Unicode punctuation character (category P*) plus ASCII's (``$+<=>^`|~`` are symbols, not P)."""
    found = {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")}
    return frozenset(found | set(string.punctuation))


# MLQA's article lists (its script covers en, es, de, ar, hi, vi, zh). Arabic: the script replaces every
# occurrence of the definite article "ال" with a space; we do the same so the numbers match published ones.
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
}
# Languages written without spaces between words: segmented into characters (MLQA does this for zh; we
# extend the same rule to Japanese, whose kana the CJK range below does not cover, by adding them).
_CHAR_SEGMENTED = {
    "zh": re.compile(r"[\u4e00-\u9fa5]"),
    "ja": re.compile(r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]"),
}


def _mixed_segmentation(text: str, char_pattern: re.Pattern) -> list[str]:
    """MLQA's segmentation for Chinese: each CJK character (and punctuation) alone, other runs by whitespace."""
    punctuation = unicode_punctuation()
    tokens: list[str] = []
    run = ""
    for ch in text:
        if char_pattern.match(ch) or ch in punctuation:
            tokens.extend(run.split())
            run = ""
            tokens.append(ch)
        else:
            run += ch
    tokens.extend(run.split())
    return tokens


def mlqa_tokens(text: str, lang: str) -> list[str]:
    """MLQA's normalisation of an answer, returned as its tokens (joined by spaces it is the normal form).

    Languages MLQA does not list (el, ru, tr, th, ...) get the language-independent steps only: lower-case,
    Unicode punctuation removed, whitespace tokens.
    """
    code = get_language(lang).code
    text = text.lower()
    punctuation = unicode_punctuation()
    text = "".join(ch for ch in text if ch not in punctuation)
    if code in _MLQA_ARTICLES:
        text = re.sub(_MLQA_ARTICLES[code], " ", text)
    if code in _CHAR_SEGMENTED:
        tokens = _mixed_segmentation(text, _CHAR_SEGMENTED[code])
    else:
        tokens = text.split()
    return [t for t in tokens if t.strip()]


def mlqa_normalize(text: str, lang: str) -> str:
    return " ".join(mlqa_tokens(text, lang))


# --------------------------------------------------------------------------------------------------- scoring


def token_f1(prediction_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1 as in both official scripts (0 when nothing overlaps, including two empty answers)."""
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _best(prediction: str, answers: Sequence[str], score: Callable[[str, str], float]) -> float:
    return max(score(prediction, gold) for gold in answers)


def squad_exact_match(prediction: str, answers: Sequence[str]) -> float:
    return _best(prediction, answers, lambda p, g: float(squad_normalize(p) == squad_normalize(g)))


def squad_f1(prediction: str, answers: Sequence[str]) -> float:
    return _best(prediction, answers, lambda p, g: token_f1(squad_normalize(p).split(), squad_normalize(g).split()))


def mlqa_exact_match(prediction: str, answers: Sequence[str], lang: str) -> float:
    return _best(prediction, answers, lambda p, g: float(mlqa_normalize(p, lang) == mlqa_normalize(g, lang)))


def mlqa_f1(prediction: str, answers: Sequence[str], lang: str) -> float:
    return _best(prediction, answers, lambda p, g: token_f1(mlqa_tokens(p, lang), mlqa_tokens(g, lang)))


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """x-LLM's metric: 1 when a (lower-cased, stripped) gold answer occurs in the lower-cased prediction."""
    lowered = prediction.lower()
    return float(any(gold.strip() and gold.strip().lower() in lowered for gold in answers))


def score_qa(predictions: Sequence[str], answers: Sequence[Sequence[str]], lang: str) -> dict:
    """All three QA metrics over a set, as percentages: squad_em/f1, mlqa_em/f1, contains, and ``n``."""
    code = get_language(lang).code
    if len(predictions) != len(answers):
        raise XllamaError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    if not predictions:
        raise XllamaError("no predictions to score")
    totals = dict.fromkeys(("squad_em", "squad_f1", "mlqa_em", "mlqa_f1", "contains"), 0.0)
    for i, (prediction, golds) in enumerate(zip(predictions, answers)):
        if isinstance(golds, str) or not golds or not all(isinstance(g, str) for g in golds):
            raise XllamaError(f"example {i + 1}: expected a non-empty list of gold answer strings, got {golds!r}")
        if not isinstance(prediction, str):
            raise XllamaError(f"example {i + 1}: prediction is {type(prediction).__name__}, expected a string")
        totals["squad_em"] += squad_exact_match(prediction, golds)
        totals["squad_f1"] += squad_f1(prediction, golds)
        totals["mlqa_em"] += mlqa_exact_match(prediction, golds, code)
        totals["mlqa_f1"] += mlqa_f1(prediction, golds, code)
        totals["contains"] += contains_answer(prediction, golds)
    n = len(predictions)
    return {**{k: 100.0 * v / n for k, v in totals.items()}, "n": n}


# --------------------------------------------------------------------------------- lm-evaluation-harness's

# lm-eval scores each task its own way; these reproduce them so that its numbers can be put beside ours
# (tests/test_lm_eval_parity.py checks them against lm-eval's own functions):
# - xquad_<lang> (lm_eval/tasks/xquad/utils.py): transformers' SQuAD v2 compute_exact / compute_f1 against the
#   FIRST gold answer only; SQuAD normalisation; an answer that normalises to nothing scores F1 1 against a
#   gold answer that does too.
# - mlqa_<c>_<q> (lm_eval/tasks/mlqa/utils.py): the MLQA script's normalisation in the context language c
#   (en es hi vi de ar zh), maximum over gold answers, the prediction stripped; for Arabic its port removes
#   "ال" only at the start of a word (the MLQA script removes every occurrence, as mlqa_em/mlqa_f1 do).
LM_EVAL_QA_METRICS = ("exact_match", "f1")
LM_EVAL_MLQA_LANGS = ("en", "es", "hi", "vi", "de", "ar", "zh")
_LM_EVAL_MLQA_ARTICLES = {**_MLQA_ARTICLES, "ar": r"(?:^|\s)ال"}


def lm_eval_task(data: str, lang: str) -> str:
    """The lm-eval task a QA run corresponds to: ``mlqa_<l>_<l>`` for MLQA data, else ``xquad_<l>``."""
    code = get_language(lang).code
    return f"mlqa_{code}_{code}" if "mlqa" in str(data).lower() else f"xquad_{code}"


def _lm_eval_xquad(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    gold, pred = squad_normalize(answers[0]).split(), squad_normalize(prediction).split()
    exact = float(gold == pred)
    if not gold or not pred:
        return exact, float(gold == pred)
    return exact, token_f1(pred, gold)


def lm_eval_mlqa_normalize(text: str, lang: str) -> str:
    """lm-eval's port of MLQA's normalize_answer (see above for its Arabic difference)."""
    punctuation = unicode_punctuation()
    text = "".join(ch for ch in text.lower() if ch not in punctuation)
    if lang in _LM_EVAL_MLQA_ARTICLES:
        text = re.sub(_LM_EVAL_MLQA_ARTICLES[lang], " ", text)
    tokens = _mixed_segmentation(text, _CHAR_SEGMENTED["zh"]) if lang == "zh" else text.split()
    return " ".join(t for t in tokens if t.strip())


def _lm_eval_mlqa(prediction: str, answers: Sequence[str], lang: str) -> tuple[float, float]:
    pred = lm_eval_mlqa_normalize(prediction.strip(), lang)
    golds = [lm_eval_mlqa_normalize(gold, lang) for gold in answers]
    return (max(float(pred == gold) for gold in golds),
            max(token_f1(pred.split(), gold.split()) for gold in golds))


def score_lm_eval_qa(predictions: Sequence[str], answers: Sequence[Sequence[str]], task: str) -> dict:
    """lm-eval's ``exact_match`` and ``f1`` for ``task`` (xquad_<l> or mlqa_<c>_<q>), as percentages (lm-eval
    prints the same means on a 0-1 scale)."""
    family, _, langs = task.partition("_")
    if family not in ("xquad", "mlqa"):
        raise XllamaError(f"no lm-eval QA task {task!r}; expected xquad_<lang> or mlqa_<context>_<question>")
    lang = langs.split("_")[0]
    if family == "mlqa" and lang not in LM_EVAL_MLQA_LANGS:
        raise XllamaError(f"lm-eval has no {task} task (MLQA's languages: {', '.join(LM_EVAL_MLQA_LANGS)})")
    if len(predictions) != len(answers) or not predictions:
        raise XllamaError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    totals = [0.0, 0.0]
    for prediction, golds in zip(predictions, answers):
        em, f1 = _lm_eval_xquad(prediction, golds) if family == "xquad" else _lm_eval_mlqa(prediction, golds, lang)
        totals[0] += em
        totals[1] += f1
    n = len(predictions)
    return {"exact_match": 100.0 * totals[0] / n, "f1": 100.0 * totals[1] / n}
