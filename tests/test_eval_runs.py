"""The translation and QA runners end to end: a tiny random Llama saved as a checkpoint, real FLORES / XQuAD
lines from shared, through ``xllama eval`` (in process); the result files' content; bad input; and the shared
SmolLM2 GGUF on a few lines (slow)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from xllama.cli import main  # noqa: E402
from xllama.eval.results import read_results  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def xquad_dir(shared):
    return shared / "data" / "eval" / "xquad"


def lines(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_translation_end_to_end(tiny_model, flores_dir, tmp_path, capsys):
    import sacrebleu

    from xllama.data.evalsets import load_flores

    out = tmp_path / "run"
    common = ["--model", str(tiny_model), "--data", str(flores_dir), "--limit", "5", "--max-new-tokens", "12",
              "--metrics", "bleu,chrf", "--out", str(out), "--no-progress"]
    assert main(["eval", "translation", "--pairs", "en-zh", *common]) == 0
    assert main(["eval", "translation", "--pairs", "zh-en", "--batch-size", "2", *common]) == 0
    printed = capsys.readouterr().out
    assert '"zh-en"' in printed

    results_file = out / "results_translation_flores101-devtest_alpaca_limit5.json"
    results = read_results(results_file)
    assert (results.task, results.model, results.data, results.prompt) == (
        "translation", str(tiny_model), str(flores_dir), "alpaca")
    assert results.decoding["num_beams"] == 1 and results.decoding["max_new_tokens"] == 12
    assert results.decoding["stop"] == "eos+first_line"
    assert set(results.scores) == {"en-zh", "zh-en"}  # the second run added its direction to the first's
    assert "tok:zh" in results.signatures["en-zh"]["bleu"] and "tok:13a" in results.signatures["zh-en"]["bleu"]
    assert "### Response:" in results.extra["prompt_template"]
    for pair, (src, tgt) in {"en-zh": ("en", "zh"), "zh-en": ("zh", "en")}.items():
        hyps = lines(out / results.extra["outputs"][pair])
        refs = load_flores(str(flores_dir), tgt)[:5]
        assert len(hyps) == results.scores[pair]["n"] == 5
        expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if tgt == "zh" else "13a").score
        assert results.scores[pair]["bleu"] == pytest.approx(expected)
        assert results.scores[pair]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)

    # A rerun is served from the generation cache and reproduces the outputs exactly.
    before = lines(out / results.extra["outputs"]["en-zh"])
    assert main(["eval", "translation", "--pairs", "en-zh", *common]) == 0
    assert lines(out / results.extra["outputs"]["en-zh"]) == before
    assert len(list((out / "cache").glob("*.jsonl"))) == 2


def test_translation_wmt_json_and_text_files(tiny_model, tmp_path):
    from xllama.eval.generate import load_for_generation
    from xllama.eval.translation import evaluate_translation

    records = [{"translation": {"zh": f"第{i}句话。", "en": f"Sentence number {i}."}} for i in range(4)]
    (tmp_path / "valid.zh-en.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "test.en").write_text("".join(f"Line {i}.\n" for i in range(3)), encoding="utf-8")
    (tmp_path / "test.zh").write_text("".join(f"第{i}行。\n" for i in range(3)), encoding="utf-8")
    model, tokenizer = load_for_generation(str(tiny_model), device="cpu")
    kwargs = dict(model=model, tokenizer=tokenizer, max_new_tokens=8, metrics="bleu", progress=False)

    wmt = evaluate_translation("tiny", data=str(tmp_path / "valid.{xx}-en.json"), pairs="zh-en,en-zh",
                               prompt="alma", out=tmp_path / "a", **kwargs)
    assert {p: s["n"] for p, s in wmt["scores"].items()} == {"zh-en": 4, "en-zh": 4}
    assert wmt["extra"]["prompt_template"] == "Translate this from Chinese to English:\nChinese: {text}\nEnglish:"
    assert (tmp_path / "a" / "results_translation_valid.xx-en.json_alma.json").is_file()

    text = evaluate_translation("tiny", data=str(tmp_path / "test.{lang}"), pairs="en-zh", out=tmp_path / "b",
                                **kwargs)
    assert text["scores"]["en-zh"]["n"] == 3
    assert len(lines(tmp_path / "b" / text["extra"]["outputs"]["en-zh"])) == 3


def test_qa_end_to_end(tiny_model, xquad_dir, tmp_path):
    from xllama.data.evalsets import load_squad
    from xllama.eval.qa import QA_INSTRUCTION
    from xllama.eval.qa_metrics import score_lm_eval_qa, score_qa

    out = tmp_path / "run"
    assert main(["eval", "qa", "--model", str(tiny_model), "--data", str(xquad_dir), "--lang", "zh",
                 "--limit", "3", "--max-new-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    results = read_results(out / "results_qa_xquad_limit3.json")
    assert (results.task, results.prompt, results.data) == ("qa", "alpaca", str(xquad_dir))
    assert QA_INSTRUCTION in results.extra["prompt_template"]
    predictions = [json.loads(line) for line in lines(out / results.extra["outputs"]["zh"])]
    gold = load_squad(str(xquad_dir), "zh")[:3]
    assert [p["id"] for p in predictions] == [ex.id for ex in gold]
    assert [p["answers"] for p in predictions] == [ex.answers for ex in gold]
    expected = score_qa([p["prediction"] for p in predictions], [ex.answers for ex in gold], "zh")
    expected.update(score_lm_eval_qa([p["prediction"] for p in predictions], [ex.answers for ex in gold], "xquad_zh"))
    assert results.scores["zh"] == pytest.approx(expected)
    assert set(results.scores["zh"]) == {"squad_em", "squad_f1", "mlqa_em", "mlqa_f1", "contains", "n",
                                         "exact_match", "f1"}  # the last two: lm-eval's xquad_zh metrics


@pytest.mark.parametrize("argv, message", [
    (["translation", "--pairs", "en-xx"], "unknown language code 'xx'"),
    (["translation", "--pairs", "en-en"], "same language"),
    (["translation", "--pairs", "en-zh", "--data", "{tmp}/missing"], "not found"),
    (["translation", "--pairs", "en-zh", "--data", "{tmp}/one.txt"], "pattern with {lang}"),
    (["translation", "--pairs", "en-zh", "--data", "{tmp}/ragged.{lang}"], "differ in length"),
    (["translation", "--pairs", "en-zh", "--metrics", "bleu,meteor"], "unknown metric 'meteor'"),
    (["qa", "--lang", "zh", "--data", "{tmp}/broken.json"],
     "broken.json: data[0].paragraphs[0].qas[0]: missing field 'answers'"),
    (["qa", "--lang", "zh", "--data", "{tmp}/missing.json"], "file not found"),
])
def test_bad_input_is_a_clear_error(tiny_model, flores_dir, tmp_path, capsys, argv, message):
    (tmp_path / "one.txt").write_text("a\n")
    (tmp_path / "ragged.en").write_text("a\nb\n")
    (tmp_path / "ragged.zh").write_text("甲\n")
    (tmp_path / "broken.json").write_text(json.dumps(
        {"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]}))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--data" not in argv and argv[0] == "translation":
        argv += ["--data", str(flores_dir)]
    code = main(["eval", *argv, "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("xllama eval: error:")
    assert not (tmp_path / "out").exists()  # failed before loading the model or writing anything


def test_bad_model_and_arguments(tmp_path, capsys):
    assert main(["eval", "qa", "--model", str(tmp_path / "nope"), "--lang", "zh"]) == 2
    assert "is not a directory or a .gguf file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "translation", "--model", "m", "--pairs", "en-zh", "--limit", "0"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_smollm_translation_cli(smollm_gguf, flores_dir, tmp_path):
    """The real model through the CLI: zh->en outputs are English sentences (SmolLM2 is English-only)."""
    out = tmp_path / "run"
    assert main(["eval", "translation", "--model", str(smollm_gguf), "--data", str(flores_dir), "--pairs", "zh-en",
                 "--limit", "8", "--max-new-tokens", "32", "--out", str(out), "--no-progress"]) == 0
    (results_file,) = out.glob("results_translation_*.json")
    results = read_results(results_file)
    scores = results.scores["zh-en"]
    assert scores["n"] == 8 and 0 <= scores["bleu"] <= 100 and 0 <= scores["off_target"] <= 100
    hyps = lines(out / results.extra["outputs"]["zh-en"])
    assert len(hyps) == 8 and sum(bool(h.strip()) for h in hyps) >= 6
    assert scores["off_target"] < 50  # the outputs are English, as asked


@pytest.mark.slow
def test_smollm_qa_cli(smollm_gguf, xquad_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "qa", "--model", str(smollm_gguf), "--data", str(xquad_dir), "--lang", "en",
                 "--limit", "5", "--max-new-tokens", "16", "--out", str(out), "--no-progress"]) == 0
    results = read_results(out / "results_qa_xquad_limit5.json")
    assert results.scores["en"]["n"] == 5
    predictions = [json.loads(line)["prediction"] for line in lines(out / results.extra["outputs"]["en"])]
    assert sum(bool(p.strip()) for p in predictions) >= 4
    assert results.scores["en"]["contains"] > 0  # an English instruct model finds some answers in the passage
