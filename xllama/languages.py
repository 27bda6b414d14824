"""The language registry: one place that maps an ISO 639-1 code to every other name a language goes by.

FLORES-101 and FLORES-200 name their files differently (``zho_simpl`` vs ``zho_Hans``), sacreBLEU needs a
script-aware tokenizer for Chinese/Japanese/Korean, and prompts need the English name. Everything else in
xllama takes the ISO code and asks this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xllama.errors import XllamaError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str  # English name, as used in prompts ("Translate from English to Chinese")
    flores101: str
    flores200: str
    script: str  # ISO 15924
    bleu_tokenize: str = "13a"  # sacreBLEU tokenizer for BLEU when this is the target language


_LANGUAGES = [
    Language("en", "English", "eng", "eng_Latn", "Latn"),
    Language("ar", "Arabic", "ara", "arb_Arab", "Arab"),
    Language("el", "Greek", "ell", "ell_Grek", "Grek"),
    Language("hi", "Hindi", "hin", "hin_Deva", "Deva"),
    Language("tr", "Turkish", "tur", "tur_Latn", "Latn"),
    Language("vi", "Vietnamese", "vie", "vie_Latn", "Latn"),
    Language("zh", "Chinese", "zho_simpl", "zho_Hans", "Hans", bleu_tokenize="zh"),
    Language("de", "German", "deu", "deu_Latn", "Latn"),
    Language("ru", "Russian", "rus", "rus_Cyrl", "Cyrl"),
    Language("cs", "Czech", "ces", "ces_Latn", "Latn"),
    Language("is", "Icelandic", "isl", "isl_Latn", "Latn"),
    Language("fr", "French", "fra", "fra_Latn", "Latn"),
    Language("es", "Spanish", "spa", "spa_Latn", "Latn"),
    Language("ja", "Japanese", "jpn", "jpn_Jpan", "Jpan", bleu_tokenize="char"),
    Language("ko", "Korean", "kor", "kor_Hang", "Hang", bleu_tokenize="char"),
    Language("sw", "Swahili", "swh", "swh_Latn", "Latn"),
    Language("th", "Thai", "tha", "tha_Thai", "Thai", bleu_tokenize="char"),
    Language("id", "Indonesian", "ind", "ind_Latn", "Latn"),
    Language("bn", "Bengali", "ben", "ben_Beng", "Beng"),
    Language("uk", "Ukrainian", "ukr", "ukr_Cyrl", "Cyrl"),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _LANGUAGES}

# The paper's six target languages (x-LLaMA / m-LLaMA).
PAPER_LANGUAGES = ("ar", "el", "hi", "tr", "vi", "zh")


# Scripts written without spaces between words: a "word" count means nothing there, so lengths count characters.
UNSEGMENTED_SCRIPTS = frozenset({"Hans", "Hant", "Jpan", "Thai", "Khmr", "Laoo", "Mymr", "Tibt"})


def length_units(text: str, lang: str | None = None) -> int:
    """A text's length in words, or in (non-space) characters when ``lang`` is written in an unsegmented
    script (Chinese, Japanese, Thai...); an unknown or missing ``lang`` counts whitespace-separated words."""
    language = LANGUAGES.get((lang or "").strip().lower())
    if language is not None and language.script in UNSEGMENTED_SCRIPTS:
        return sum(1 for ch in text if not ch.isspace())
    return len(text.split())


def get_language(code: str) -> Language:
    """Look a language up by ISO 639-1 code (or a FLORES-101/200 code); unknown codes list the known ones."""
    key = code.strip()
    if key.lower() in LANGUAGES:
        return LANGUAGES[key.lower()]
    for lang in _LANGUAGES:
        if key in (lang.flores101, lang.flores200):
            return lang
    known = ", ".join(sorted(LANGUAGES))
    raise XllamaError(f"unknown language code {code!r}; known codes: {known}")


def parse_languages(spec: str | list[str]) -> list[str]:
    """Parse 'ar,el,zh' (or a list) into validated ISO codes, keeping order and dropping repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    codes: list[str] = []
    for item in items:
        if item.strip():
            code = get_language(item).code
            if code not in codes:
                codes.append(code)
    if not codes:
        raise XllamaError(f"no language given in {spec!r}")
    return codes


def parse_pair(spec: str) -> tuple[str, str]:
    """Parse a direction such as 'en-zh' into (source, target) ISO codes."""
    parts = spec.strip().split("-")
    if len(parts) != 2 or not all(parts):
        raise XllamaError(f"bad language pair {spec!r}: expected SRC-TGT such as en-zh")
    src, tgt = get_language(parts[0]).code, get_language(parts[1]).code
    if src == tgt:
        raise XllamaError(f"bad language pair {spec!r}: source and target are the same language")
    return src, tgt


def expand_languages(obj: Any, languages: list[str]) -> Any:
    """Expand '{lang}' templates: a mapping key containing it becomes one key per language; a string value
    containing it (outside such a key) becomes a list; used for per-language data locations in recipes."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and "{lang}" in k:
                for lang in languages:
                    out[k.replace("{lang}", lang)] = _fill(v, lang)
            else:
                out[k] = expand_languages(v, languages)
        return out
    if isinstance(obj, list):
        return [expand_languages(v, languages) for v in obj]
    if isinstance(obj, str) and "{lang}" in obj:
        return [obj.replace("{lang}", lang) for lang in languages]
    return obj


def _fill(obj: Any, lang: str) -> Any:
    if isinstance(obj, dict):
        return {k: _fill(v, lang) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, lang) for v in obj]
    return obj.replace("{lang}", lang) if isinstance(obj, str) else obj
