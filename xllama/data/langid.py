"""Is each source in the language its label says? A check before mixing.

English Alpaca passed as ``zh=``, or the two files of a pair swapped, would silently train the wrong thing.
``check_language`` samples up to ``SAMPLE`` texts of a labelled source (evenly spread over it), detects their
language with lingua (low-accuracy mode, loaded with only the languages of the mix and English: fast, and
enough to tell them apart) and returns the detected shares; ``LanguageChecker`` collects them for the
manifest and raises an XllamaError naming the source, its label and the detected languages with their shares
when most of the decided texts are not in the labelled language, unless the mismatch is accepted knowingly
(``accept_language_mismatch: true`` in the spec, ``--accept-language-mismatch`` on the command line).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from xllama.errors import XllamaError
from xllama.languages import get_language

SAMPLE = 200  # texts per source
MAX_CHARS = 400  # of each text
MIN_SHARE = 0.5  # a source must be at least this share its labelled language (of the texts lingua decides)


def sample_texts(texts: list[str], n: int = SAMPLE) -> list[str]:
    """Up to ``n`` non-blank texts spread evenly over ``texts`` (deterministic), each cut to MAX_CHARS."""
    step = max(1, len(texts) // n)
    picked = [t[:MAX_CHARS] for t in texts[::step] if t and t.strip()]
    return picked[:n]


class StrideSample:
    """Texts spread evenly over a stream of unknown length, in bounded memory: every ``stride``-th text is kept,
    and once ``2 * n`` are held every other one is dropped and the stride doubles. Deterministic (no seed): the
    texts at positions 0, stride, 2 * stride, ... of the stream, between n and 2n of them once the stream is
    longer than 2n. ``sample_texts`` then picks up to n of them, evenly."""

    def __init__(self, n: int = SAMPLE):
        self.n, self.stride, self.seen = n, 1, 0
        self.texts: list[str] = []

    def extend(self, count: int, text_of) -> None:
        """The next ``count`` texts of the stream; ``text_of(j)`` gives the j-th (called only for those kept)."""
        j = (-self.seen) % self.stride
        while j < count:
            self.texts.append(text_of(j)[:MAX_CHARS])
            if len(self.texts) >= 2 * self.n:
                self.texts = self.texts[::2]
                self.stride *= 2
            position = self.seen + j
            j = (position // self.stride + 1) * self.stride - self.seen
        self.seen += count


def _detector(languages: list[str]):
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError:
        raise XllamaError("the language check needs lingua: pip install lingua-language-detector "
                          "(or pass --accept-language-mismatch to skip the check)") from None
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in languages]
    return LanguageDetectorBuilder.from_languages(*langs).with_low_accuracy_mode().build()


@dataclass
class LanguageChecker:
    """Detects the languages of labelled sources among ``languages`` (English is added) and records them."""

    languages: list[str]
    accept_mismatch: bool = False
    results: list[dict] = field(default_factory=list)
    _built: object = None

    def __post_init__(self):
        self.languages = list(dict.fromkeys(["en", *(get_language(lang).code for lang in self.languages)]))

    def detect(self, texts: list[str]) -> tuple[dict[str, float], int]:
        """(detected language -> share of the decided texts, number of decided texts) of a sample of ``texts``."""
        sample = sample_texts(texts)
        if len(self.languages) < 2 or not sample:
            return {}, 0
        if self._built is None:
            self._built = _detector(self.languages)
        found = self._built.detect_languages_in_parallel_of(sample)
        counts = Counter(r.iso_code_639_1.name.lower() for r in found if r is not None)
        decided = sum(counts.values())
        return {lang: round(c / decided, 3) for lang, c in counts.most_common()}, decided

    def check(self, source: str, label: str, texts: list[str], where: str = "") -> dict:
        """Check one labelled source (``source`` names it, e.g. instructions.zh); raise on a mismatch unless
        accepted. Returns the manifest record."""
        label = get_language(label).code
        shares, decided = self.detect(texts)
        mismatch = decided > 0 and shares.get(label, 0.0) < MIN_SHARE
        record = {"source": source, "label": label, "sampled": decided, "detected": shares, "mismatch": mismatch}
        if where:
            record["location"] = where
        self.results.append(record)
        if mismatch and not self.accept_mismatch:
            found = ", ".join(f"{lang} {share:.0%}" for lang, share in shares.items())
            raise XllamaError(
                f"{source}{f' ({where})' if where else ''}: labelled {label} ({get_language(label).name}), but "
                f"lingua detects {found} in {decided} sampled texts (languages considered: "
                f"{', '.join(self.languages)}); check the label or the order of a pair's files, or accept it "
                "knowingly with --accept-language-mismatch (spec key accept_language_mismatch: true)"
            )
        return record
