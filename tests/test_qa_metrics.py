"""QA metrics against hand-computed cases: SQuAD v1.1, MLQA's multilingual normalisation, x-LLM's 'contains'."""

from __future__ import annotations

import pytest

from xllama.errors import XllamaError
from xllama.eval import qa_metrics as Q


def test_squad_normalisation():
    assert Q.squad_normalize("  The  Denver Broncos! ") == "denver broncos"
    assert Q.squad_normalize("an apple, a pear") == "apple pear"
    assert Q.squad_normalize("theatre") == "theatre"  # articles only as whole words
    assert Q.squad_normalize("“quoted”") == "“quoted”"  # SQuAD strips ASCII punctuation only


def test_squad_em_f1_hand_computed():
    assert Q.squad_exact_match("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    # prediction tokens [it, was, 1990] vs gold [in, 1990]: P=1/3, R=1/2, F1=0.4
    assert Q.squad_f1("it was 1990.", ["in 1990"]) == pytest.approx(0.4)
    # the maximum over gold answers
    assert Q.squad_f1("it was 1990.", ["1991", "in 1990", "was 1990"]) == pytest.approx(0.8)
    assert Q.squad_f1("", ["x"]) == 0.0
    # repeated tokens are clipped: pred [x, x, y] vs gold [x, y]: P=2/3, R=1
    assert Q.squad_f1("x x y", ["x y"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_mlqa_chinese_mixed_segmentation():
    assert Q.mlqa_tokens("北京是首都 in 2008年！", "zh") == ["北", "京", "是", "首", "都", "in", "2008", "年"]
    # character-level F1 for Chinese: pred 北京市 vs gold 北京: P=2/3, R=1 -> 0.8; SQuAD sees one token each: 0
    assert Q.mlqa_f1("北京市", ["北京"], "zh") == pytest.approx(0.8)
    assert Q.squad_f1("北京市", ["北京"]) == 0.0
    assert Q.mlqa_exact_match("“北京”。", ["北京"], "zh") == 1.0  # Unicode punctuation removed
    assert Q.squad_exact_match("“北京”。", ["北京"]) == 0.0


def test_mlqa_articles_per_language():
    assert Q.mlqa_normalize("Die Katze", "de") == "katze"
    assert Q.mlqa_normalize("The Katze", "de") == "the katze"  # German rules, not English
    assert Q.mlqa_normalize("El gato", "es") == "gato"
    assert Q.mlqa_normalize("những con mèo", "vi") == "con mèo"
    assert Q.mlqa_normalize("الكتاب", "ar") == "كتاب"
    assert Q.mlqa_normalize("¿Qué? ¡Sí!", "es") == "qué sí"
    assert Q.mlqa_normalize("Η γάτα.", "el") == "η γάτα"  # outside MLQA's list: punctuation + lower only


def test_contains_metric():
    assert Q.contains_answer("The answer is Denver Broncos.", ["denver broncos"]) == 1.0
    assert Q.contains_answer("the answer is denver broncos.", ["Denver Broncos"]) == 1.0
    assert Q.contains_answer("I do not know", ["Denver Broncos", ""]) == 0.0  # an empty gold never matches


def test_score_qa_percentages():
    out = Q.score_qa(["The Denver Broncos", "it was 1990.", "北京"], [["Denver Broncos"], ["1991", "in 1990"],
                                                                     ["上海"]], "en")
    assert out == {
        "squad_em": pytest.approx(100 / 3),
        "squad_f1": pytest.approx(100 * (1 + 0.4 + 0) / 3),
        "mlqa_em": pytest.approx(100 / 3),
        "mlqa_f1": pytest.approx(100 * (1 + 0.4 + 0) / 3),
        "contains": pytest.approx(100 / 3),
        "n": 3,
    }
    zh = Q.score_qa(["答案是北京市", "上海"], [["北京"], ["上海", "上海市"]], "zh")
    # 1: chars [答,案,是,北,京,市] vs [北,京]: P=2/6, R=1 -> F1=0.5; 2: exact
    assert zh["mlqa_f1"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert zh["mlqa_em"] == pytest.approx(50.0)
    assert zh["contains"] == pytest.approx(100.0)
    assert zh["squad_f1"] == pytest.approx(50.0)


def test_score_qa_bad_input():
    with pytest.raises(XllamaError, match="2 predictions but 1 answer lists"):
        Q.score_qa(["a", "b"], [["a"]], "en")
    with pytest.raises(XllamaError, match="example 1"):
        Q.score_qa(["a"], [[]], "en")
    with pytest.raises(XllamaError, match="unknown language"):
        Q.score_qa(["a"], [["a"]], "xx")
