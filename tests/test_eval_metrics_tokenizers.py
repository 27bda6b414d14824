"""Issue 18's metric additions: ja/ko BLEU with sacreBLEU's MeCab tokenizers where installed (else characters,
with a note in the signature), and spBLEU with the flores200 SentencePiece model as well as flores101."""

from __future__ import annotations

import pytest
import sacrebleu

from xllama.eval import metrics as M

JA_REFS = ["私は毎朝コーヒーを飲みます。", "東京は日本の首都です。", "この本はとても面白かった。"]
JA_HYPS = ["私は朝にコーヒーを飲む。", "東京は日本の首都だ。", "この本は面白い。"]
KO_REFS = ["나는 매일 아침 커피를 마신다.", "서울은 한국의 수도이다.", "이 책은 매우 재미있었다."]
KO_HYPS = ["나는 아침에 커피를 마신다.", "서울은 한국의 수도다.", "이 책은 재미있다."]


@pytest.mark.parametrize("lang, hyps, refs", [("ja", JA_HYPS, JA_REFS), ("ko", KO_HYPS, KO_REFS)])
def test_japanese_and_korean_bleu_use_mecab_or_say_why_not(lang, hyps, refs):
    tokenizer, install = M.MECAB_TOKENIZERS[lang]
    score, signature = M.bleu(hyps, refs, lang)
    if M.mecab_available(tokenizer):
        assert f"tok:{tokenizer}" in signature and "note:" not in signature
        assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenizer).score)
    else:
        assert "tok:char|" in signature and signature.endswith(f"|note:{tokenizer} not installed ({install}), "
                                                               "tok:char used")
        assert score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="char").score)
    # an explicit tokenizer is taken as given, without a note
    assert "note:" not in M.bleu(hyps, refs, lang, tokenize="char")[1]
    assert "note:" not in M.score_translation(hyps, refs, "zh", metrics="bleu")["signature"]["bleu"]


def test_spbleu_flores200_as_well_as_flores101(shared, tmp_path, monkeypatch):
    import sentencepiece

    from xllama.data.evalsets import load_flores

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = str(shared / "data" / "eval" / "flores101")
    refs = load_flores(root, "zh")[:20]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(load_flores(root, "zh")[:200] + load_flores(root, "en")[:200]) + "\n",
                      encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm"),
                                             vocab_size=1200, character_coverage=0.98, minloglevel=2)
    spm = tmp_path / "spm.model"
    hyps = [line[::2] for line in refs]
    out = M.score_translation(hyps, refs, "zh", metrics="spbleu", spbleu_tokenize="flores200", spm_model=spm)
    assert "tok:flores200|" in out["signature"]["spbleu"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    pieces = lambda lines: [" ".join(sp.encode(line, out_type=str)) for line in lines]  # noqa: E731
    assert out["spbleu"] == pytest.approx(sacrebleu.corpus_bleu(pieces(hyps), [pieces(refs)], tokenize="none").score)
    assert "tok:flores101|" in M.spbleu(hyps, refs, "flores101", spm_model=spm)[1]
