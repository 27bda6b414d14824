"""The contamination guard: near-copies of evaluation sentences are caught, unrelated sentences are kept."""

from __future__ import annotations

import pytest

from xllama.data.guard import ContaminationGuard, GuardConfig, GuardReport, guard_key, normalize, tokens
from xllama.data.sources import GuardData

FLORES_EN = ("On Monday, scientists from the Stanford University School of Medicine announced the invention of a "
             "new diagnostic tool that can sort cells by type.")
FLORES_QUOTE = 'He said "we now have 4-month-old mice that are non-diabetic that used to be diabetic," he added.'
FLORES_ZH = "周一，斯坦福大学医学院的科学家宣布，他们发明了一种可以将细胞按类型分类的新型诊断工具。"


def make_guard(*texts, location="flores101", config=GuardConfig()):
    return ContaminationGuard([GuardData(location, "text", list(texts))], config)


def check(guard, text):
    return guard.match(normalize(text))


@pytest.mark.parametrize(
    "variant",
    [
        FLORES_EN.lower(),  # lower-casing
        FLORES_EN[:-1],  # dropped final period
        FLORES_EN.replace("Monday,", "Monday"),  # dropped comma
        FLORES_EN.upper().replace(" ", "  "),  # case and whitespace
    ],
)
def test_english_near_copies_are_caught_by_the_key(variant):
    hit = check(make_guard(FLORES_EN), variant)
    assert hit is not None and hit.rule == "key" and hit.evaluation == FLORES_EN


def test_quote_variants_and_full_width_forms_are_caught():
    guard = make_guard(FLORES_QUOTE)
    curly = FLORES_QUOTE.replace('"we', "\u201cwe").replace('," he', ",\u201d he")
    assert check(guard, curly).rule == "key"
    assert check(guard, FLORES_QUOTE.replace('"', "'")).rule == "key"
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in FLORES_QUOTE)
    assert check(guard, full_width).rule == "key"


def test_chinese_with_spaces_and_other_punctuation_is_caught():
    guard = make_guard(FLORES_ZH)
    assert check(guard, " ".join(FLORES_ZH)).rule == "key"  # a space between every character
    assert check(guard, FLORES_ZH.replace("，", ",").replace("。", "")).rule == "key"  # ASCII comma, no full stop
    assert check(guard, "周一 斯坦福大学医学院的科学家 宣布 他们发明了一种可以将细胞按类型分类的新型诊断工具").rule == "key"


def test_a_copied_sentence_inside_a_longer_text_is_caught():
    guard = make_guard(FLORES_EN)
    output = "Here is a summary of the news. " + FLORES_EN + " The tool could help poor countries."
    hit = check(guard, output)
    assert hit.rule == "key" and hit.matched == FLORES_EN  # its sentence's key
    glued = "Breaking news: " + FLORES_EN.replace(", scientists", " scientists")  # no sentence boundary to split at
    assert check(guard, glued).rule == "long_ngram"


def test_near_copies_with_changed_words_are_caught_by_the_ngram_rules():
    guard = make_guard(FLORES_EN, FLORES_ZH)
    changed = FLORES_EN.replace("Monday", "Tuesday").replace("new", "novel")
    assert check(guard, changed).rule in ("long_ngram", "ngram_share")
    one_edit = FLORES_EN.replace("invention", "creation")  # no 13-word run left, 15 of its 20 5-grams
    hit = check(guard, one_edit)
    assert hit is not None and hit.rule == "ngram_share" and hit.evaluation == FLORES_EN
    rewritten = FLORES_EN.replace("scientists", "researchers").replace("announced", "revealed").replace("that", "which")
    assert check(guard, rewritten) is None  # 7 of 20 5-grams: a paraphrase, not a copy
    assert check(guard, FLORES_ZH.replace("周一", "周二").replace("新型", "新的")).rule in ("long_ngram", "ngram_share")


@pytest.mark.parametrize(
    "unrelated",
    [
        "What is the name of the first basketball governing body?",  # XQuAD: "What is the name of the first Doctor Who serial?"
        "The University School of Medicine is one of the oldest in the United States of America.",
        "On Monday, the weather was nice and we went to the park.",
        "Write a short poem about a new diagnostic tool.",
        "斯坦福大学是一所位于美国加州的私立研究型大学。",
        "他们发明了一种新的游戏。",
    ],
)
def test_unrelated_sentences_sharing_short_phrases_are_kept(unrelated):
    guard = make_guard(FLORES_EN, FLORES_ZH, "What is the name of the first Doctor Who serial?")
    assert check(guard, unrelated) is None


def test_short_evaluation_texts_are_not_registered():
    guard = make_guard("2.", "Paris", FLORES_EN)
    assert check(guard, "Paris") is None and check(guard, "2") is None


def test_report_counts_per_guard_set_and_rule_and_records_thresholds():
    flores = GuardData("flores101", "flores", [FLORES_EN])
    xquad = GuardData("xquad", "squad", [FLORES_ZH])
    report = GuardReport(ContaminationGuard([flores, xquad]))
    assert report.contaminated("alpaca_en", "file:record 1", normalize(FLORES_EN.lower()))
    assert report.contaminated("alpaca_zh", "file:record 2", normalize(" ".join(FLORES_ZH)))
    assert report.contaminated("alpaca_en", "file:record 3", normalize("News: " + FLORES_EN.replace(",", "")))
    assert not report.contaminated("alpaca_en", "file:record 4", normalize("An unrelated sentence about cats."))
    d = report.as_dict()
    assert d["by_guard"] == {"flores101": 2, "xquad": 1}
    assert d["by_rule"] == {"key": 2, "long_ngram": 1, "ngram_share": 0}
    assert d["thresholds"]["words"] == {"n": 5, "share": 0.6, "min_tokens": 10, "long": 13}
    assert d["thresholds"]["chars"]["long"] == 20 and d["thresholds"]["min_length"] == 15
    assert [s["origin"] for s in d["samples"]] == ["file:record 1", "file:record 2", "file:record 3"]


def test_tokens_words_characters_and_marks():
    assert tokens("Hello, world! It's 3.5") == (["hello", "world", "it", "s", "3", "5"], False)
    assert tokens("我爱 Python 编程，好吗？") == (list("我爱编程好吗"), True)  # characters of the unsegmented script
    assert tokens("नमस्ते दुनिया")[0] == ["नमस्ते", "दुनिया"]  # vowel signs stay in their word
    assert guard_key("Ｈｅｌｌｏ，“World”!") == guard_key("hello world") == "helloworld"


def test_mix_manifest_records_rules_and_thresholds():
    from xllama.data.mix import build_mix
    from xllama.data.sample import sample_spec

    _, manifest = build_mix(sample_spec(["zh"]), progress=False)
    assert manifest["removed"]["contamination"] == sum(manifest["contamination_by_rule"].values()) > 0
    assert set(manifest["contamination_by_rule"]) == {"key", "long_ngram", "ngram_share"}
    assert manifest["guard_thresholds"]["words"]["long"] == 13
    assert all("rule" in s and "evaluation" in s for s in manifest["contamination_samples"])
