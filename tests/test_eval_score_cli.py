"""``xllama eval score``: scores files without a model, prints JSON, and rejects bad input clearly."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from xllama.cli import main as cli_main


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(shared, tmp_path):
    from xllama.data.evalsets import load_flores

    root = str(shared / "data" / "eval" / "flores101")
    zh, en = load_flores(root, "zh")[:25], load_flores(root, "en")[:25]
    hyps = zh[:20] + en[20:]  # 5 of 25 answered in English
    return {
        "hyp": write(tmp_path / "hyp.zh", hyps), "ref": write(tmp_path / "ref.zh", zh),
        "src": write(tmp_path / "src.en", en), "hyps": hyps, "refs": zh, "tmp": tmp_path,
    }


def test_score_prints_json_with_signatures(files, capsys):
    out_path = files["tmp"] / "scores.json"
    rc = cli_main(["eval", "score", "--hyp", files["hyp"], "--ref", files["ref"], "--tgt", "zh",
                     "--metrics", "bleu,chrf,off_target", "--out", str(out_path)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(files["hyps"], [files["refs"]], tokenize="zh").score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(files["hyps"], [files["refs"]], word_order=2).score)
    assert result["off_target"] == pytest.approx(20.0)
    assert result["n"] == 25 and result["tgt"] == "zh"
    assert "tok:zh" in result["signature"]["bleu"]
    assert json.loads(out_path.read_text(encoding="utf-8")) == result


def test_swapped_files_change_bleu(files, capsys):
    short = write(files["tmp"] / "short.zh", [line[: len(line) // 2] for line in files["refs"]])
    cli_main(["eval", "score", "--hyp", short, "--ref", files["ref"], "--tgt", "zh", "--metrics", "bleu"])
    forward = json.loads(capsys.readouterr().out)["bleu"]
    cli_main(["eval", "score", "--hyp", files["ref"], "--ref", short, "--tgt", "zh", "--metrics", "bleu"])
    backward = json.loads(capsys.readouterr().out)["bleu"]
    assert forward != pytest.approx(backward)


@pytest.mark.parametrize("change,message", [
    (lambda f: {"ref": write(f["tmp"] / "r2", f["refs"][:24])},
     "hypothesis file .*hyp.zh has 25 lines but reference file .*r2 has 24"),
    (lambda f: {"src": write(f["tmp"] / "s2", f["refs"][:3])}, "source file .*s2 has 3 lines"),
    (lambda f: {"hyp": write(f["tmp"] / "empty", [])}, "hypothesis file .*empty is empty"),
    (lambda f: {"ref": str(f["tmp"] / "nope")}, "reference file not found"),
    (lambda f: {"tgt": "xx"}, "unknown language code 'xx'"),
    (lambda f: {"metrics": "bleu,meteor"}, "unknown metric 'meteor'"),
    (lambda f: {"bleu_tokenize": "moses"}, "unknown BLEU tokenizer 'moses'"),
    (lambda f: {"spbleu_tokenize": "flores300"}, "unknown spBLEU tokenizer 'flores300'"),
])
def test_bad_input_is_one_line_error_exit_2(files, capsys, change, message):
    args = {"hyp": files["hyp"], "ref": files["ref"], "tgt": "zh", "src": files["src"], "metrics": "bleu"}
    args.update(change(files))
    argv = []
    for key, value in args.items():
        argv += [f"--{key.replace('_', '-')}", value]
    assert cli_main(["eval", "score", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xllama eval score: error: ") and err.count("\n") == 1
    import re

    assert re.search(message, err), err
