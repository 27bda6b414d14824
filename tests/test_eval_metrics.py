"""Translation metrics against sacreBLEU itself, hand-computed BLEU, signatures, spBLEU, off-target rate."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from xllama.errors import XllamaError
from xllama.eval import metrics as M


@pytest.fixture(scope="module")
def flores(shared):
    from xllama.data.evalsets import load_flores

    root = str(shared / "data" / "eval" / "flores101")
    return {lang: load_flores(root, lang)[:60] for lang in ("en", "zh", "de")}


# ------------------------------------------------------------------------------------------------------ BLEU


def test_bleu_hand_computed():
    # 6 tokens each, so no brevity penalty; clipped n-gram precisions 5/6, 3/5, 2/4, 1/3.
    score, _ = M.bleu(["the cat sat on the mat"], ["the cat sat on a mat"], "en")
    assert score == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-9)


def test_bleu_argument_order_matters():
    """Hypotheses first: a short hypothesis pays the brevity penalty, a long one loses precision."""
    long, short = "the cat sat on the mat today", "the cat sat on the mat"
    hyp_long, _ = M.bleu([long], [short], "en")
    hyp_short, _ = M.bleu([short], [long], "en")
    assert hyp_long == pytest.approx(100 * (6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, abs=1e-9)
    assert hyp_short == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-9)
    assert hyp_long != pytest.approx(hyp_short)
    # and it is sacreBLEU's corpus_bleu(hyps, [refs]) order
    assert hyp_short == pytest.approx(sacrebleu.corpus_bleu([short], [[long]]).score)


def test_bleu_and_chrf_equal_sacrebleu_on_flores(flores):
    hyps, refs = flores["de"][:30], flores["de"][30:60]  # unrelated German sentences: low but non-zero BLEU
    score, signature = M.bleu(hyps, refs, "de")
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    chrf, chrf_sig = M.chrf(hyps, refs)
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert "nw:2" in chrf_sig and "nc:6" in chrf_sig
    assert chrf != pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)  # chrF++, not chrF


def test_chinese_target_uses_zh_tokenizer(flores):
    refs = flores["zh"][:20]
    hyps = [line[: len(line) // 2] + line[-5:] for line in refs]  # damaged copies of the references
    score, signature = M.bleu(hyps, refs, "zh")
    assert "tok:zh" in signature
    assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert score != pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert 0 < score < 100


@pytest.mark.parametrize("tgt,tok", [("en", "13a"), ("de", "13a"), ("zh", "zh"), ("ja", "char"), ("th", "char")])
def test_tokenizer_follows_target_language(tgt, tok):
    _, signature = M.bleu(["a b c d"], ["a b c d"], tgt)
    assert f"tok:{tok}|" in signature


def test_explicit_tokenizer_override_and_unknown_one():
    _, signature = M.bleu(["a b"], ["a b"], "zh", tokenize="13a")
    assert "tok:13a" in signature
    with pytest.raises(XllamaError, match="unknown BLEU tokenizer 'moses'"):
        M.bleu(["a"], ["a"], "en", tokenize="moses")


def test_bad_inputs():
    with pytest.raises(XllamaError, match="hypotheses has 2 segments but references has 1"):
        M.bleu(["a", "b"], ["a"], "en")
    with pytest.raises(XllamaError, match="no segments"):
        M.chrf([], [])
    with pytest.raises(XllamaError, match="unknown language code 'xx'"):
        M.score_translation(["a"], ["a"], "xx")
    with pytest.raises(XllamaError, match="unknown metric 'rouge'"):
        M.score_translation(["a"], ["a"], "en", metrics="bleu,rouge")


def test_score_translation_shape(flores):
    out = M.score_translation(flores["zh"][:10], flores["zh"][:10], "zh", metrics="bleu,chrf,off_target")
    assert out["bleu"] == pytest.approx(100.0) and out["chrf"] == pytest.approx(100.0)
    assert out["off_target"] == 0.0 and out["n"] == 10
    assert set(out["signature"]) == {"bleu", "chrf", "off_target"}
    assert out["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:")


# ---------------------------------------------------------------------------------------------------- spBLEU


def test_spbleu_offline_error_says_how(monkeypatch, tmp_path):
    from sacrebleu.tokenizers import tokenizer_spm

    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))
    monkeypatch.delenv(M.SPM_MODEL_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XllamaError) as e:
        M.spbleu(["a b"], ["a b"], "flores200")
    message = str(e.value)
    assert tokenizer_spm.SPM_MODELS["flores200"]["url"] in message
    assert str(tmp_path / "sacrebleu" / "models" / "flores200sacrebleuspm") in message
    assert "--spm-model" in message and M.SPM_MODEL_ENV in message
    assert not (tmp_path / "sacrebleu").exists()  # nothing tried, nothing written


def test_spbleu_failed_download_is_a_clear_error(monkeypatch, tmp_path):
    import sacrebleu.utils
    from sacrebleu.tokenizers import tokenizer_spm

    def no_network(url, path):
        raise OSError("no route to host")

    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path))
    monkeypatch.setattr(sacrebleu.utils, "download_file", no_network)
    for var in ("HF_HUB_OFFLINE", "XLLAMA_OFFLINE", M.SPM_MODEL_ENV):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(XllamaError, match="download failed: no route to host") as e:
        M.spbleu(["a"], ["a"], "flores101")
    assert "sacrebleu_tokenizer_spm.model" in str(e.value)


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory, flores):
    """A small SentencePiece model trained here on FLORES (the real flores101 one cannot be downloaded)."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(flores["en"] + flores["zh"] + flores["de"]) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tiny"),
                                             vocab_size=1200, character_coverage=0.9995, minloglevel=2)
    return folder / "tiny.model"


def test_spbleu_with_local_model(tiny_spm, flores, monkeypatch, tmp_path):
    import sentencepiece

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = flores["zh"][:20]
    hyps = [line[::2] for line in refs]
    score, signature = M.spbleu(hyps, refs, "flores101", spm_model=tiny_spm)
    assert "tok:flores101|" in signature
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_spm))
    pieces = lambda lines: [" ".join(sp.encode(line, out_type=str)) for line in lines]  # noqa: E731
    expected = sacrebleu.corpus_bleu(pieces(hyps), [pieces(refs)], tokenize="none").score
    assert score == pytest.approx(expected)
    assert 0 < score < 100

    # the same file through the environment variable, and placed where sacreBLEU looks
    monkeypatch.setenv(M.SPM_MODEL_ENV, str(tiny_spm))
    assert M.spbleu(hyps, refs, "flores101")[0] == pytest.approx(expected)
    monkeypatch.delenv(M.SPM_MODEL_ENV)
    from sacrebleu.tokenizers import tokenizer_spm

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sacrebleu_tokenizer_spm.model").write_bytes(tiny_spm.read_bytes())
    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path))
    out = M.score_translation(hyps, refs, "zh", metrics="spbleu,bleu")
    assert out["spbleu"] == pytest.approx(expected)
    assert out["spbleu"] != pytest.approx(out["bleu"])
    with pytest.raises(XllamaError, match="not found"):
        M.spbleu(hyps, refs, spm_model=tmp_path / "missing.model")


# ----------------------------------------------------------------------------------------------- off-target


def test_off_target_on_flores(flores):
    assert M.off_target_rate(flores["en"][:40], "zh") == 100.0  # answering in English: the paper's failure
    assert M.off_target_rate(flores["zh"][:40], "zh") == 0.0
    assert M.off_target_rate(flores["en"][:40], "en") == 0.0
    mixed = flores["zh"][:6] + flores["en"][:2] + ["", "   "]
    assert M.off_target_rate(mixed, "zh") == pytest.approx(40.0)  # English and empty lines are off-target


def test_detect_language_and_cached_detector(flores):
    assert M.detect_language(flores["de"][0]) == "de"
    assert M.detect_language("") is None
    assert M._language_detector() is M._language_detector()


def test_missing_metric_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    missing = ("lingua", "comet")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(XllamaError, match="lingua-language-detector"):
        M.score_translation(["a"], ["a"], "zh", metrics="bleu,off_target")
    with pytest.raises(XllamaError, match="unbabel-comet"):
        M.score_translation(["a"], ["a"], "zh", srcs=["a"], metrics="comet")
