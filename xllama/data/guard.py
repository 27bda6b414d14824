"""The contamination guard: no training example may contain a sentence of a registered evaluation set.

One guard for every task (x-LLaMA/m-LLaMA mixes, ALMA stage 2). Three rules, checked per training sentence
(each field is checked whole and sentence by sentence):

- ``key``: the field's or sentence's *key* equals the key of an evaluation text or sentence. The key is NFKC
  (full-width forms -> ASCII), case-folded, with every punctuation mark (straight or curly quotes, commas, full
  stops of any script), symbol and whitespace removed, so "Hello, “world”." and "hello "world"" and "你 好 世界"
  vs "你好世界" share a key. Keys shorter than ``min_length`` (``text_length`` units: CJK characters count 3) are
  not registered, so "2." or a name never removes a training example; a sentence inside a longer field is
  compared only if it has at least ``n`` tokens (a fragment such as "Swimming is safe." is no leak).
- ``long_ngram``: the sentence shares a run of ``long`` tokens with an evaluation sentence (GPT-3's 13-gram
  test). Tokens are words for segmented scripts and characters for unsegmented ones (Chinese, Japanese, Thai,
  ...): a sentence whose tokens are mostly such characters is read as characters.
- ``ngram_share``: at least ``share`` of the sentence's ``n``-grams occur in one and the same evaluation sentence
  (a near-copy with a word or two changed), for sentences of at least ``min_tokens`` tokens.

The thresholds (``GuardConfig``) are recorded in the mix manifest with the counts removed per guard set and per
rule (``GuardReport``). Short common phrases ("in the United States") are far shorter than ``long`` and far
less than ``share`` of a sentence, so unrelated sentences that share them are kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field

from xllama.data.sources import GuardData, split_sentences, text_length

RULES = ("key", "long_ngram", "ngram_share")
WORD_STRIDE, CHAR_STRIDE = 2, 4  # see ContaminationGuard._candidate

# Scripts written without spaces between words: their n-grams are over characters.
_UNSEGMENTED = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\U00020000-\U0002fa1f"
)


def _mark_ranges() -> str:
    """A character-class body of the combining marks (Unicode M*) of the BMP: Indic vowel signs, Arabic and
    Hebrew diacritics... belong to their word (``re``'s \\w leaves them out)."""
    ranges, start, prev = [], None, None
    for cp in range(0x300, 0x10000):
        if unicodedata.category(chr(cp))[0] == "M":
            if start is None:
                start = cp
            elif cp != prev + 1:
                ranges.append((start, prev))
                start = cp
            prev = cp
    ranges.append((start, prev))
    return "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


_MARKS = _mark_ranges()
# A word: a run of letters and digits (not of an unsegmented script) with their combining marks. A key keeps
# letters, digits and marks of every script and drops punctuation, symbols, underscores and whitespace.
_LETTER = rf"[^\W_{_UNSEGMENTED}]"
_WORDS = re.compile(rf"{_LETTER}+(?:[{_MARKS}]+{_LETTER}*)*")
_NOT_KEY = re.compile(rf"[^\w{_MARKS}]+|_+")
_ASCII_WORDS = re.compile(r"[a-z0-9]+")
_NOT_UNSEGMENTED = re.compile(rf"[^{_UNSEGMENTED}]+")


def normalize(text: str) -> str:
    """Unicode NFKC and collapsed whitespace: the form in which two training examples count as duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def analyse(text: str) -> tuple[str, list[str], str]:
    """(key, words, characters) of an NFKC-normalised text. The key is case-folded without punctuation, symbols
    and whitespace; words are its runs of letters and digits outside unsegmented scripts, characters its
    characters of unsegmented scripts. The text is *unsegmented* (n-grams over its characters) when it has more
    such characters than words."""
    if text.isascii():
        words = _ASCII_WORDS.findall(text.lower())
        return "".join(words), words, ""
    folded = text.casefold()
    return _NOT_KEY.sub("", folded), _WORDS.findall(folded), _NOT_UNSEGMENTED.sub("", folded)


def guard_key(text: str) -> str:
    """The comparison key: NFKC, case-folded, without punctuation, symbols and whitespace."""
    return analyse(unicodedata.normalize("NFKC", text))[0]


def tokens(text: str) -> tuple[list[str], bool]:
    """(tokens, unsegmented) of an NFKC-normalised text: its characters of unsegmented scripts if they
    outnumber its words, else its words."""
    _, words, chars = analyse(text)
    unsegmented = len(chars) > len(words)
    return (list(chars) if unsegmented else words), unsegmented


def _grams(words: list[str], chars: str, unsegmented: bool, n: int):
    """n-grams: substrings of the characters (unsegmented scripts) or tuples of words."""
    if unsegmented:
        return (chars[i : i + n] for i in range(len(chars) - n + 1))
    return zip(*(words[i:] for i in range(n)))


@dataclass(frozen=True)
class NgramRule:
    n: int  # n-gram size of the share rule
    share: float  # share of the sentence's n-grams found in one evaluation sentence
    min_tokens: int  # shortest sentence the share rule applies to
    long: int  # a shared run this long is contamination on its own


@dataclass(frozen=True)
class GuardConfig:
    min_length: int = 15  # shortest registered key, text_length units
    words: NgramRule = NgramRule(n=5, share=0.6, min_tokens=10, long=13)
    chars: NgramRule = NgramRule(n=8, share=0.6, min_tokens=16, long=20)

    def as_dict(self) -> dict:
        return {"rules": list(RULES), **asdict(self)}


@dataclass
class Hit:
    guard: int  # index of the guard set
    rule: str  # key | long_ngram | ngram_share
    matched: str  # the training text that matched
    evaluation: str  # the evaluation sentence it matched


class ContaminationGuard:
    """Keys and n-gram indexes of the registered evaluation sets (whole texts and their sentences)."""

    def __init__(self, sets: list[GuardData], config: GuardConfig = GuardConfig()):
        self.sets, self.config = sets, config
        self.keys: dict[str, tuple[int, str]] = {}  # key -> (guard set, evaluation text)
        self.sentences: list[tuple[int, str]] = []  # evaluation sentences of the n-gram rules
        # n-gram -> ids of the evaluation sentences holding it, and the set of long n-grams: words (tuples) and
        # characters (substrings of the key) apart
        self.grams: tuple[dict[tuple, list[int]], dict[str, list[int]]] = ({}, {})
        self.long: tuple[set[tuple], set[str]] = (set(), set())
        for gid, guard in enumerate(sets):
            for text in guard.texts:
                norm = normalize(text)
                sentences = split_sentences(norm)
                for unit in dict.fromkeys([norm, *sentences]):
                    if text_length(unit) >= config.min_length:
                        self.keys.setdefault(analyse(unit)[0], (gid, unit))
                for sentence in sentences:
                    self._index(gid, sentence)

    def _rule(self, unsegmented: bool) -> NgramRule:
        return self.config.chars if unsegmented else self.config.words

    def _index(self, gid: int, sentence: str) -> None:
        _, words, chars = analyse(sentence)
        unseg = len(chars) > len(words)
        rule = self._rule(unseg)
        if max(len(chars), len(words)) < rule.n:
            return
        sid = len(self.sentences)
        self.sentences.append((gid, sentence))
        grams = self.grams[unseg]
        for gram in set(_grams(words, chars, unseg, rule.n)):
            grams.setdefault(gram, []).append(sid)
        self.long[unseg].update(_grams(words, chars, unseg, rule.long))

    def __bool__(self) -> bool:
        return bool(self.keys or self.sentences)

    def match(self, *texts: str) -> Hit | None:
        """The first rule any of ``texts`` (NFKC-normalised), or any of its sentences, breaks; None if clean."""
        for text in texts:
            if not text:
                continue
            key, words, chars = analyse(text)
            found = self.keys.get(key)
            if found:
                return Hit(found[0], "key", text, found[1])
            if not self._candidate(words, chars):
                continue  # the fast path: no n-gram of the text is in any evaluation sentence
            for sentence in split_sentences(text):
                key, words, chars = analyse(sentence)
                unseg = len(chars) > len(words)
                size = len(chars) if unseg else len(words)
                if size < self._rule(unseg).n:
                    continue
                found = self.keys.get(key)
                if found:
                    return Hit(found[0], "key", sentence, found[1])
                hit = self._ngram(sentence, words, chars, unseg, size)
                if hit:
                    return hit
        return None

    def _candidate(self, words: list[str], chars: str) -> bool:
        """Whether a whole text may break a rule: one of its word n-grams at every ``WORD_STRIDE``-th position,
        or of its character n-grams at every ``CHAR_STRIDE``-th position, is an evaluation sentence's. (A
        sentence that breaks a rule shares a run of at least that many consecutive n-grams with an evaluation
        sentence: an edit changes up to n consecutive n-grams, so the few edits a 60% share allows leave such
        runs, and a share of 60% cannot alternate with misses; the strides make the scan 2-4 times cheaper.)"""
        n = self.config.words.n
        if not self.grams[False].keys().isdisjoint(zip(*(words[i::WORD_STRIDE] for i in range(n)))):
            return True
        n = self.config.chars.n
        return len(chars) >= n and not self.grams[True].keys().isdisjoint(
            [chars[i : i + n] for i in range(0, len(chars) - n + 1, CHAR_STRIDE)])

    def _ngram(self, sentence: str, words: list[str], chars: str, unseg: bool, size: int) -> Hit | None:
        rule = self._rule(unseg)
        grams = self.grams[unseg]
        found = [grams.get(g) for g in _grams(words, chars, unseg, rule.n)]
        hits = [ids for ids in found if ids]
        if not hits:
            return None
        if size >= rule.long and not self.long[unseg].isdisjoint(_grams(words, chars, unseg, rule.long)):
            sid = Counter(s for ids in hits for s in ids).most_common(1)[0][0]
            return Hit(self.sentences[sid][0], "long_ngram", sentence, self.sentences[sid][1])
        if size >= rule.min_tokens and len(hits) >= rule.share * len(found):
            sid, count = Counter(s for ids in hits for s in ids).most_common(1)[0]
            if count >= rule.share * len(found):
                return Hit(self.sentences[sid][0], "ngram_share", sentence, self.sentences[sid][1])
        return None


@dataclass
class GuardReport:
    """What a guard removed: counts per guard set and per rule, and a few examples to show what it caught."""

    guard: ContaminationGuard
    by_guard: Counter = field(default_factory=Counter)
    by_rule: Counter = field(default_factory=Counter)
    samples: list[dict] = field(default_factory=list)
    max_samples: int = 10

    def contaminated(self, source: str, origin: str, *texts: str) -> bool:
        """Check (NFKC-normalised) ``texts`` of one example; count and remember a hit."""
        hit = self.guard.match(*texts)
        if hit is None:
            return False
        location = self.guard.sets[hit.guard].location
        self.by_guard[location] += 1
        self.by_rule[hit.rule] += 1
        if len(self.samples) < self.max_samples:
            self.samples.append({"source": source, "origin": origin, "rule": hit.rule, "matched": hit.matched[:200],
                                 "evaluation": hit.evaluation[:200], "guard": location})
        return True

    def as_dict(self) -> dict:
        return {"thresholds": self.guard.config.as_dict(), "by_guard": dict(self.by_guard),
                "by_rule": {rule: self.by_rule[rule] for rule in RULES}, "samples": self.samples}


def guard_manifest(report: GuardReport | None) -> dict:
    """The guard's part of every manifest (mixes, ALMA): counts per guard set and rule, samples, thresholds."""
    d = report.as_dict() if report else {}
    return {"contamination_by_guard": d.get("by_guard", {}), "contamination_by_rule": d.get("by_rule", {}),
            "contamination_samples": d.get("samples", []), "guard_thresholds": d.get("thresholds")}
