"""Prompt formats: the Stanford-Alpaca prompt used by x-LLM (training and evaluation) and the ALMA prompt.

Training and evaluation must build prompts with the same code, or a model is scored on a format it never saw;
that is why every prompt in xllama comes from here.
"""

from __future__ import annotations

import hashlib

from xllama.errors import XllamaError
from xllama.languages import get_language

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALMA_TEMPLATE = "Translate this from {source} to {target}:\n{source}: {text}\n{target}:"

PROMPT_STYLES = ("alpaca", "alma")
# The one default of `xllama translate` and `xllama eval translation`: the prompt xllama's x-LLaMA / m-LLaMA
# models are trained on. ALMA-trained models need --prompt alma.
DEFAULT_PROMPT = "alpaca"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt; the response is appended directly after '### Response:'."""
    if input and input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def alma_prompt(src: str, tgt: str, text: str) -> str:
    """ALMA's translation prompt (Xu et al. 2023); the target is appended after a space."""
    return ALMA_TEMPLATE.format(source=get_language(src).name, target=get_language(tgt).name, text=text)


# Paraphrased translation instructions (our own wording). One is chosen per pair by a stable hash of the
# source sentence, so a mix is reproducible across runs and machines while the model sees varied phrasing.
TRANSLATION_TEMPLATES = (
    "Translate the following sentence from {src} to {tgt}.",
    "Translate this {src} text into {tgt}.",
    "Please translate the sentence below into {tgt}.",
    "Render the following {src} sentence in {tgt}.",
    "What is the {tgt} translation of this {src} sentence?",
    "Convert the given {src} text into {tgt}.",
    "Give a {tgt} translation of the input.",
    "Translate the input from {src} into {tgt}.",
    "Provide the {tgt} version of the following {src} sentence.",
    "Express the following sentence in {tgt}.",
    "How would you say this in {tgt}?",
    "Write the following {src} sentence in {tgt}.",
    "Translate into {tgt}.",
    "Turn this {src} sentence into fluent {tgt}.",
    "Produce an accurate {tgt} translation of the text below.",
    "I need this {src} sentence translated into {tgt}.",
    "Translate the text that follows from {src} to {tgt}, keeping its meaning.",
    "Can you translate this into {tgt}?",
    "Rewrite the given {src} sentence in {tgt}.",
    "Please give the {tgt} equivalent of this sentence.",
    "Translate the sentence into natural {tgt}.",
    "Put the following {src} text into {tgt}.",
    "Translate this from {src} to {tgt}.",
    "Offer a faithful {tgt} translation of the input sentence.",
    "Change the language of this sentence from {src} to {tgt}.",
    "What does this {src} sentence say in {tgt}? Translate it.",
    "Translate the given sentence; the target language is {tgt}.",
    "From {src} to {tgt}: translate the input.",
    "Please convert this {src} passage into {tgt}.",
    "Translate the {src} input into {tgt} and output only the translation.",
    "Give me the {tgt} translation of the following.",
    "Translate the input text to {tgt}.",
)


def translation_instruction(src: str, tgt: str, key: str) -> str:
    """A translation instruction for SRC->TGT, chosen deterministically from ``key`` (the source sentence)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    template = TRANSLATION_TEMPLATES[int.from_bytes(digest, "little") % len(TRANSLATION_TEMPLATES)]
    return template.format(src=get_language(src).name, tgt=get_language(tgt).name)


def translation_prompt(style: str, src: str, tgt: str, text: str) -> str:
    """The prompt a model sees when asked to translate ``text`` (evaluation and `xllama translate`).

    For the Alpaca style the instruction is the first template, fixed, so evaluation is reproducible.
    """
    if style == "alpaca":
        instruction = TRANSLATION_TEMPLATES[0].format(src=get_language(src).name, tgt=get_language(tgt).name)
        return alpaca_prompt(instruction, text)
    if style == "alma":
        return alma_prompt(src, tgt, text)
    raise XllamaError(f"unknown prompt style {style!r}; expected one of {', '.join(PROMPT_STYLES)}")


# ------------------------------------------------------------------------------------ lm-evaluation-harness

# QA prompt styles: x-LLM's Alpaca prompt (xllama.eval.qa) or lm-evaluation-harness's zero-shot prompt, so that
# a number from xllama can be put next to one from `lm_eval --tasks xquad_zh` / `mlqa_zh_zh`.
QA_PROMPT_STYLES = ("alpaca", "lm-eval")

# lm-eval's XQuAD prompts (lm_eval/tasks/xquad/xquad_<lang>.yaml, v1.0): "<context label>: {context}\n\n
# <question label>: {question}\n\n<answer label>:", localised per language. Its MLQA tasks (mlqa_<c>_<q>) use
# the English labels for every language.
LM_EVAL_QA_TEMPLATE = "{c}: {context}\n\n{q}: {question}\n\n{a}:"
LM_EVAL_QA_LABELS = {
    "ar": ("سيا", "سؤال", "إجابة"),
    "de": ("Kontext", "Frage", "Antwort"),
    "el": ("Συμφραζόμενα", "Ερώτηση", "Απάντηση"),
    "en": ("Context", "Question", "Answer"),
    "es": ("Contexto", "Pregunta", "Respuesta"),
    "hi": ("प्रसंग", "सवाल", "उत्तर"),
    "ro": ("Context", "Întrebare", "Răspuns"),
    "ru": ("Контекст", "Вопрос", "Ответ"),
    "th": ("บริบท", "คำถาม", "คำตอบ"),
    "tr": ("Bağlam", "Soru", "Cevap"),
    "vi": ("Bối cảnh", "Câu hỏi", "Trả lời"),
    "zh": ("语境", "问题", "回答"),
}


def lm_eval_qa_prompt(context: str, question: str, lang: str, task: str = "xquad") -> str:
    """lm-eval's zero-shot prompt for ``xquad_<lang>`` (localised labels) or ``mlqa_<lang>_<lang>`` (English
    labels); context and question verbatim, as its Jinja templates insert them. The answer is what the model
    generates before the first newline (its ``until: ["\\n"]``)."""
    code = lang.strip().lower()
    code = code if code in LM_EVAL_QA_LABELS else get_language(lang).code  # ro: in XQuAD, not in the registry
    if task == "mlqa":
        labels = LM_EVAL_QA_LABELS["en"]
    elif code in LM_EVAL_QA_LABELS:
        labels = LM_EVAL_QA_LABELS[code]
    else:
        raise XllamaError(f"lm-eval has no xquad_{code} task (its XQuAD prompts cover "
                          f"{', '.join(sorted(LM_EVAL_QA_LABELS))}); use --prompt alpaca for {code}")
    c, q, a = labels
    return LM_EVAL_QA_TEMPLATE.format(c=c, q=q, a=a, context=context, question=question)
