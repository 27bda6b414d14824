"""The sample dataset shipped with the package, so that the quickstart runs offline with no other data.

Written for xllama (not taken from Alpaca or any corpus): 60 instructions with answers in English, with
Chinese and German versions; 80 English sentences with Chinese and German translations; and a tiny
"evaluation set" (``guard.txt``) of which two sentences also occur among the pairs, so a sample build shows
the contamination guard at work. The files use different formats on purpose (bilingual JSON, JSONL, Moses
pair, JSONL translation records, plain text), so the quickstart exercises the real loaders.

It is far too small to teach a model a language: it exists to check that the pipeline runs end to end.
"""

from __future__ import annotations

from pathlib import Path

from xllama.errors import XllamaError
from xllama.languages import parse_languages

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_LANGUAGES = ("zh", "de")

SAMPLE_INSTRUCTIONS = {
    "en": "instructions.en-zh.json",  # bilingual records: en_instruction, ..., zh_output
    "zh": "instructions.en-zh.json",
    "de": "instructions.de.jsonl",  # Alpaca JSONL
}
SAMPLE_PARALLEL = {
    "en-zh": "pairs.en-zh",  # Moses prefix: pairs.en-zh.en + pairs.en-zh.zh
    "en-de": "pairs.en-de.jsonl",  # {"translation": {"en": ..., "de": ...}}
}
SAMPLE_GUARD = "guard.txt"


def _check_languages(languages) -> list[str]:
    langs = [lang for lang in parse_languages(languages) if lang != "en"] if languages else []
    unknown = [lang for lang in langs if lang not in SAMPLE_LANGUAGES]
    if unknown:
        raise XllamaError(
            f"the shipped sample has no data for {', '.join(unknown)}; sample languages: {', '.join(SAMPLE_LANGUAGES)} "
            "(pass your own data with --instructions/--parallel)"
        )
    return langs


def sample_spec(languages=("zh",), mix: str | None = None, seed: int = 42, **settings):
    """A MixSpec over the shipped sample: x-llama for one language, m-llama for several, or ``mix``.

    ``settings`` are any other MixSpec keys (sizes, directions, ...); the same as ``MixSpec.from_dict`` with
    ``sample: true``.
    """
    from xllama.data.mix import MixSpec

    langs = _check_languages(languages)
    if mix is None:
        mix = "m-llama" if len(langs) > 1 else "x-llama"
    d = {**settings, "mix": mix, "languages": langs, "seed": seed, "sample": True}
    return MixSpec.from_dict(d, where="sample")


def fill_from_sample(spec, where: str) -> None:
    """Fill a spec's missing instructions/parallel/guard with the sample's files (``sample: true``)."""
    langs = _check_languages(spec.languages or None)
    if not langs and spec.mix != "alpaca":
        raise XllamaError(f"{where}.languages: say which sample language(s) to use: {', '.join(SAMPLE_LANGUAGES)}")
    for lang in ["en"] if spec.mix == "alpaca" else ["en", *langs]:
        spec.instructions.setdefault(lang, [str(SAMPLE_DIR / SAMPLE_INSTRUCTIONS[lang])])
    if spec.mix != "alpaca":
        for lang in langs:
            if f"en-{lang}" not in spec.parallel and f"{lang}-en" not in spec.parallel:
                spec.parallel[f"en-{lang}"] = [str(SAMPLE_DIR / SAMPLE_PARALLEL[f"en-{lang}"])]
    if not spec.guard:
        spec.guard = [str(SAMPLE_DIR / SAMPLE_GUARD)]
