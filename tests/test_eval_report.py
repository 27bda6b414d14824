"""Result files (write/read/validate) and ``xllama eval report``'s side-by-side table."""

from __future__ import annotations

import argparse
import json

import pytest

from xllama.errors import XllamaError
from xllama.eval import report
from xllama.eval.results import EvalResults, read_results, write_results

SIG = "nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:2.6.0"


def translation_run(folder, model, bleu_enzh, off_target, sig=SIG):
    return write_results(
        folder / "results_flores101.json", task="translation", model=model, data="flores101", prompt="alpaca",
        decoding={"num_beams": 1, "max_new_tokens": 256},
        scores={"en-zh": {"bleu": bleu_enzh, "off_target": off_target, "n": 1012},
                "zh-en": {"bleu": 10.0, "n": 1012}},
        signatures={"en-zh": {"bleu": sig}},
    )


def test_write_read_roundtrip(tmp_path):
    path = translation_run(tmp_path, "base", 1.5, 80.0)
    results = read_results(path)
    assert isinstance(results, EvalResults)
    assert results.scores["en-zh"]["bleu"] == 1.5 and results.decoding["num_beams"] == 1
    raw = json.loads(path.read_text())
    assert raw["schema"] == "xllama.eval.results/1" and raw["created"] and raw["xllama_version"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left behind


@pytest.mark.parametrize("patch,message", [
    ({"task": "summarisation"}, "key 'task' is 'summarisation'"),
    ({"model": ""}, "key 'model' must be a non-empty string"),
    ({"scores": {"en-zh": {"bleu": "high"}}}, r"scores\['en-zh'\]\['bleu'\] must be a finite number"),
    ({"scores": {"en-zh": 3}}, r"scores\['en-zh'\] must be an object"),
    ({"signatures": {"en-zh": {"bleu": 1}}}, r"signatures\['en-zh'\] must map metric names to strings"),
])
def test_validation_names_file_and_key(tmp_path, patch, message):
    good = {"task": "qa", "model": "m", "data": "xquad", "prompt": "alpaca", "decoding": {},
            "scores": {"zh": {"squad_f1": 1.0}}}
    path = tmp_path / "results_bad.json"
    path.write_text(json.dumps({**good, **patch}))
    with pytest.raises(XllamaError, match=message) as e:
        read_results(path)
    assert str(path) in str(e.value)
    with pytest.raises(XllamaError, match=message):
        write_results(tmp_path / "out.json", {**good, **patch})
    assert not (tmp_path / "out.json").exists()


def test_report_side_by_side(tmp_path, capsys):
    base = translation_run(tmp_path / "base", "base", 1.5, 80.0).parent
    xl = translation_run(tmp_path / "xllama", "x-llama", 20.25, 3.0).parent
    write_results(xl / "results_xquad.json", task="qa", model="x-llama", data="xquad", prompt="alpaca",
                  decoding={}, scores={"zh": {"squad_f1": 30.0, "contains": 41.5, "n": 1190}})
    args = argparse.Namespace(runs=[str(base), str(xl)], out=str(tmp_path / "r.json"),
                              markdown=str(tmp_path / "r.md"))
    assert report.run(args) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "r.md").read_text(encoding="utf-8")
    lines = printed.splitlines()
    assert lines[0] == "| task | data | pair/lang | metric | base | x-llama |"
    assert "| translation | flores101 | en-zh | bleu | 1.50 | **20.25** |" in lines
    assert "| translation | flores101 | en-zh | off_target | 80.00 | **3.00** |" in lines  # lower is better
    assert "| translation | flores101 | en-zh | n | 1012 | 1012 |" in lines
    assert "| translation | flores101 | zh-en | bleu | 10.00 | 10.00 |" in lines  # a tie: nothing bold
    assert "| qa | xquad | zh | squad_f1 | – | 30.00 |" in lines
    assert f"- bleu: `{SIG}`" in lines
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["columns"] == ["base", "x-llama"] and len(data["sources"]) == 3
    row = next(r for r in data["rows"] if r["group"] == "en-zh" and r["metric"] == "bleu")
    assert row["values"] == {"base": 1.5, "x-llama": 20.25}


def test_report_flags_different_signatures(tmp_path):
    a = translation_run(tmp_path / "a", "a", 1.0, 0.0)
    b = translation_run(tmp_path / "b", "b", 2.0, 0.0, sig=SIG.replace("tok:zh", "tok:13a"))
    markdown = report.to_markdown(report.build_report([a, b]))
    assert "| translation | flores101 | en-zh | bleu ⚠ |" in markdown
    assert "not comparable" in markdown


def test_report_bad_paths(tmp_path):
    with pytest.raises(XllamaError, match="no such result file or run directory"):
        report.build_report([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(XllamaError, match="holds no results"):
        report.build_report([tmp_path / "empty"])


def test_result_file_name_is_found_by_report(tmp_path):
    from xllama.eval.results import result_file_name

    assert result_file_name("translation", "flores101") == "results_translation_flores101.json"
    assert result_file_name("qa", "/data/xquad/") == "results_qa_xquad.json"
    write_results(tmp_path / result_file_name("qa", "xquad"), task="qa", model="m", data="xquad", prompt="alpaca",
                  scores={"zh": {"contains": 1.0}})
    assert report.build_report([tmp_path])["rows"][0]["values"] == {"m": 1.0}
