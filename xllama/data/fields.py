"""Validators for the values of a recipe's ``data`` section (and any spec read from YAML or JSON).

Each takes the value and the key it came from (``recipe.data.sizes.alpaca_zh``) and returns the value checked
and normalised, or raises :class:`~xllama.errors.XllamaError` naming that key and what was expected. Every spec
parser (the mixer's :class:`~xllama.data.mix.MixSpec`, ALMA's stages, CPO) uses these, so one key is checked the
same way, with the same message, wherever it appears.
"""

from __future__ import annotations

import re

from xllama.errors import XllamaError
from xllama.languages import get_language, parse_pair


def is_number(value) -> bool:
    """An int or float, not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(value, key: str, minimum: int | None = None) -> int:
    """An integer (``64`` or ``64.0``), at least ``minimum`` when given."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise XllamaError(f"{key}: expected an integer{bound}, got {value!r}")
    return value


def positive_number(value, key: str, meaning: str = "") -> float:
    """A number > 0; ``meaning`` (e.g. " (1: natural proportions)") is added to the message."""
    if not is_number(value) or value <= 0:
        raise XllamaError(f"{key}: expected a positive number{meaning}, got {value!r}")
    return float(value)


def choice(value, choices, key: str):
    if value not in choices:
        raise XllamaError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def size(value, key: str) -> int | float:
    """A count (integer >= 0) or a fraction (0 < float <= 1)."""
    if not is_number(value):
        raise XllamaError(f"{key}: expected a count (integer) or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise XllamaError(f"{key}: a count must be >= 0, got {value}")
        return value
    if not 0 < value <= 1:
        raise XllamaError(f"{key}: a fraction must be in (0, 1], got {value}; write counts as integers")
    return float(value)


_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(value, key: str) -> int:
    """A count such as a token budget: 20000000, 2e7, '20M' or '20B' (K, M, B, T: powers of 1000) -> int >= 1."""
    if is_number(value):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if not match:
            raise XllamaError(f"{key}: expected a token count such as 1000000, 1M or 20B, got {value!r}")
        number = float(match.group(1)) * _SCALE[match.group(2).lower()]
    if number < 1:
        raise XllamaError(f"{key}: must be at least 1, got {value!r}")
    return int(number)


def language(code, key: str) -> str:
    """A language code (``zh``, ``ZH``) -> its canonical code."""
    try:
        return get_language(str(code)).code
    except XllamaError as e:
        raise XllamaError(f"{key}: {e}") from None


def language_list(value, key: str) -> list[str] | None:
    """A list of language codes or a comma-separated string (``de,zh``) -> canonical codes; None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise XllamaError(f"{key}: expected a list of language codes, got {value!r}")
    return [language(item, f"{key}[{i}]") for i, item in enumerate(items) if str(item).strip()]


def language_pair(pair, key: str) -> str:
    """``de-en`` (or ``DE-en``) -> ``"src-tgt"`` in canonical codes."""
    try:
        src, tgt = parse_pair(str(pair))
    except XllamaError as e:
        raise XllamaError(f"{key}: {e}") from None
    return f"{src}-{tgt}"


def mapping(value, key: str) -> dict:
    """A mapping; a missing value (None) is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise XllamaError(f"{key}: expected a mapping, got {value!r}")
    return value


def locations(value, key: str) -> list[str]:
    """A location (path or ``hf:owner/name[:config]``) or a non-empty list of them -> stripped strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise XllamaError(f"{key}: expected a location (path or hf:owner/name[:config]) or a list of them, "
                          f"got {value!r}")
    return [v.strip() for v in items]


def language_locations(value, key: str) -> dict[str, list[str]]:
    """``{de: LOCATION or [LOCATIONS], ...}`` -> {canonical code: locations}; None is empty."""
    return {language(lang, f"{key}.{lang}"): locations(locs, f"{key}.{lang}")
            for lang, locs in mapping(value, key).items()}


def pair_locations(value, key: str) -> dict[str, list[str]]:
    """``{de-en: LOCATION or [LOCATIONS], ...}`` -> {"src-tgt": locations}; None is empty."""
    return {language_pair(pair, f"{key}.{pair}"): locations(locs, f"{key}.{pair}")
            for pair, locs in mapping(value, key).items()}


def language_weights(value, languages: list[str], key: str, what: str = "weight") -> dict[str, float]:
    """``{de: 0.2, zh: 0.19, ...}`` -> {canonical code: positive float}, one for each of ``languages`` and no
    other (a mix's language weights, ALMA's stage-1 ratios); ``what`` names them in messages."""
    weights = {}
    for lang, number in mapping(value, key).items():
        code = language(lang, f"{key}.{lang}")
        if code not in languages:
            raise XllamaError(f"{key}.{lang}: not one of this spec's languages ({', '.join(languages)})")
        weights[code] = positive_number(number, f"{key}.{lang}")
    missing = [lang for lang in languages if lang not in weights]
    if missing:
        raise XllamaError(f"{key}: no {what} for {', '.join(missing)}; give one for each of {', '.join(languages)}")
    return {lang: weights[lang] for lang in languages}
