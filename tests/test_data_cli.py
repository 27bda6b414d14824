"""`xllama data build` / `xllama data stats`: the issue's "done means" build on the shared zh data, the catalog
(recipe) form, the Hub form through a local mirror, and every bad input ending in exit 2 with no output left."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xllama.cli import main
from xllama.data.mix import load_mix, normalize

REPO = Path(__file__).resolve().parent.parent


def xllama(*argv: str) -> int:
    return main(["data", *argv])


@pytest.mark.slow
def test_done_means_zh_build(shared, tmp_path, capsys):
    """Alpaca en/zh + ALMA zh-en pairs with FLORES-101 devtest as guard, through the CLI."""
    data = shared / "data"
    out = tmp_path / "x-llama-zh"
    code = xllama(
        "build",
        "--lang",
        "zh",
        "--mix",
        "x-llama",
        "--instructions",
        f"en={data}/instructions/alpaca-en-zh",
        "--instructions",
        f"zh={data}/instructions/alpaca-en-zh",
        "--parallel",
        f"en-zh={data}/parallel/alma-human-written/zhen",
        "--guard",
        f"{data}/eval/flores101/devtest",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0
    printed = capsys.readouterr().out
    dataset, manifest = load_mix(out)
    assert f"wrote {manifest['examples']:,} examples" in printed
    assert manifest["examples"] == len(dataset) == sum(manifest["by_source"].values())
    by_source = manifest["by_source"]
    assert set(by_source) == {"alpaca_en", "alpaca_zh", "translation"}
    assert 51_000 < by_source["alpaca_en"] <= 52_002 and 51_000 < by_source["alpaca_zh"] <= 52_002
    assert 13_000 < by_source["translation"] <= 15_406 - 1012
    assert manifest["by_direction"] == {"en-zh": by_source["translation"]}
    assert manifest["removed"]["contamination"] >= 1012
    assert manifest["seed"] == 42 and len(manifest["content_hash"]) == 32
    flores = {
        normalize(s)
        for f in ("eng", "zho_simpl")
        for s in (data / f"eval/flores101/devtest/{f}.devtest").read_text().splitlines()
    }
    columns = dataset.to_dict()
    assert not flores & {normalize(t) for t in columns["input"] + columns["output"]}

    assert xllama("stats", str(out)) == 0
    stats = capsys.readouterr().out
    assert "alpaca_zh" in stats and "removed:" in stats and "p95" in stats
    assert xllama("stats", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["examples"] == manifest["examples"]
        and summary["lengths"]["translation"]["examples"] == by_source["translation"]
    )


@pytest.mark.slow
def test_catalog_recipe_over_shared_paths(shared, tmp_path, monkeypatch, capsys):
    if (REPO / "../shared/data").resolve() != (shared / "data").resolve():
        pytest.skip("the recipe's ../shared paths do not point at the shared data from this checkout")
    monkeypatch.chdir(REPO)
    out = tmp_path / "mix"
    code = xllama(
        "build",
        "--spec",
        "recipes/data/x-llama-zh-shared.yaml",
        "--out",
        str(out),
        "--quiet",
        "--size",
        "alpaca_en=2000",
        "--size",
        "alpaca_zh=0.05",
        "--parallel-size",
        "zh=3000",
        "--seed",
        "7",
    )
    assert code == 0, capsys.readouterr().err
    _, manifest = load_mix(out)
    assert manifest["by_source"] == {
        "alpaca_en": 2000,
        "alpaca_zh": round(0.05 * manifest["sizes"]["alpaca_zh"]["available"]),
        "translation": 3000,
    }
    assert manifest["seed"] == 7 and manifest["removed"]["contamination"] >= 1012
    assert [g["kind"] for g in manifest["guard"]] == ["flores", "squad"]


def _parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_hub_recipe_through_a_mirror(tmp_path, monkeypatch, capsys):
    """The Hub recipe, unchanged, against local files of the Hub's layout (XLLAMA_HUB_MIRROR)."""
    import datasets

    mirror = tmp_path / "mirror"
    leaked = "This sentence is part of the FLORES test set."
    _parquet(
        mirror / "tatsu-lab/alpaca/default/train/0000.parquet",
        {"instruction": ["Name a colour.", "Add 2 and 3."], "input": ["", ""], "output": ["Blue.", "5"]},
    )
    bactrian = mirror / "MBZUAI/Bactrian-X/data/zh.json.gz"
    bactrian.parent.mkdir(parents=True)
    with gzip.open(bactrian, "wt", encoding="utf-8") as f:
        for rid, ins, out in [("alpaca-0", "说出一种颜色。", "蓝色。"), ("dolly-7", "光是什么？", "一种波。")]:
            f.write(json.dumps({"instruction": ins, "input": "", "id": rid, "output": out}, ensure_ascii=False) + "\n")
    _parquet(
        mirror / "sentence-transformers/parallel-sentences-wikimatrix/en-zh/train/0000.parquet",
        {"english": ["The cat sleeps on the sofa.", leaked], "non_english": ["猫在沙发上睡觉。", "这句话属于测试集。"]},
    )
    for code, sentence in (("eng", leaked), ("zho_simpl", "另一句测试句子。")):
        _parquet(mirror / f"gsarti/flores_101/{code}/devtest/0000.parquet", {"id": [1], "sentence": [sentence]})
    for lang in ("en", "zh"):
        _parquet(
            mirror / f"google/xquad/xquad.{lang}/validation/0000.parquet",
            {
                "id": ["q1"],
                "context": ["A context paragraph about something else entirely."],
                "question": ["What is this paragraph about?"],
                "answers": [{"text": ["something"], "answer_start": [25]}],
            },
        )
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(mirror))
    monkeypatch.delenv("XLLAMA_DATA", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.chdir(REPO)
    out = tmp_path / "mix"
    assert xllama("build", "--spec", "recipes/data/x-llama-zh-hub.yaml", "--out", str(out), "--quiet") == 0
    dataset, manifest = load_mix(out)
    assert manifest["by_source"] == {"alpaca_en": 2, "alpaca_zh": 1, "translation": 1}
    assert manifest["removed"]["contamination"] == 1
    assert leaked not in dataset["input"]
    hubs = {loc.get("hub") for s in manifest["sources"] for loc in s["locations"]}
    assert hubs == {"tatsu-lab/alpaca", "MBZUAI/Bactrian-X", "sentence-transformers/parallel-sentences-wikimatrix"}


def test_sample_build_and_allocation(tmp_path, capsys):
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"allocation": {"zh": 25, "de": 15}, "budget": 40}))
    out = tmp_path / "mix"
    assert xllama("build", "--sample", "--lang", "zh,de", "--allocation", str(alloc), "--out", str(out), "--quiet") == 0
    _, manifest = load_mix(out)
    assert manifest["spec"]["mix"] == "m-llama" and manifest["by_direction"] == {"en-de": 15, "en-zh": 25}
    assert (
        xllama(
            "build",
            "--sample",
            "--lang",
            "zh",
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
            "--directions",
            "both",
            "--seed",
            "5",
        )
        == 0
    )
    _, manifest = load_mix(out)
    assert set(manifest["by_direction"]) == {"en-zh", "zh-en"} and manifest["seed"] == 5


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "pairs").mkdir()
    (tmp / "pairs/train.zh-en.zh").write_text("一\n二\n三\n")
    (tmp / "pairs/train.zh-en.en").write_text("one\ntwo\n")
    (tmp / "broken.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": \n')
    (tmp / "data.xml").write_text("<data/>")
    (tmp / "ok.json").write_text(
        json.dumps([{"instruction": "Greet the whole team politely.", "input": "", "output": "Hi."}])
    )
    ok = str(tmp / "ok.json")
    return {
        "line counts": (
            ["--mix", "custom", "--parallel", f"en-zh={tmp}/pairs"],
            r"train.zh-en.en has 2 lines.*train.zh-en.zh has 3|train.zh-en.zh has 3 lines.*train.zh-en.en has 2",
        ),
        "malformed JSON line": (
            ["--mix", "custom", "--instructions", f"en={tmp}/broken.jsonl"],
            r"broken\.jsonl: line 2: malformed JSON",
        ),
        "missing file": (
            ["--mix", "custom", "--instructions", f"en={tmp}/absent.json"],
            r"file not found: .*absent\.json",
        ),
        "unknown format": (["--mix", "custom", "--instructions", f"en={tmp}/data.xml"], r"unknown format .*data\.xml"),
        "unknown language": (
            ["--lang", "xx", "--instructions", f"en={ok}"],
            r"unknown language code 'xx'; known codes: ar, .*zh",
        ),
        "empty result": (
            ["--mix", "custom", "--instructions", f"en={ok}", "--guard", ok.replace("ok.json", "eval.txt")],
            r"the mix is empty",
        ),
        "nothing to build": (["--lang", "zh"], r"nothing to build"),
        "bad size": (
            ["--sample", "--lang", "zh", "--size", "alpaca_zh=2.5"],
            r"sizes\.alpaca_zh: a fraction must be in",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "line counts",
        "malformed JSON line",
        "missing file",
        "unknown format",
        "unknown language",
        "empty result",
        "nothing to build",
        "bad size",
    ],
)
def test_bad_input_exits_2_and_leaves_no_output(case, tmp_path, capsys):
    argv, message = _bad_inputs(tmp_path)[case]
    (tmp_path / "eval.txt").write_text("Greet the whole team politely.\n")  # the only instruction is held out
    out = tmp_path / "out"
    assert xllama("build", *argv, "--out", str(out), "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("xllama data: error: ") and err.count("\n") == 1, err
    import re

    assert re.search(message, err), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "a temporary directory was left"


def test_existing_output_and_non_mix_stats(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert xllama("build", "--sample", "--lang", "zh", "--out", str(out), "--quiet") == 2
    assert "already exists" in capsys.readouterr().err
    assert xllama("build", "--sample", "--lang", "zh", "--out", str(out), "--overwrite", "--quiet") == 2
    assert "not an xllama mix" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert xllama("stats", str(out)) == 2
    assert "is not an xllama mix" in capsys.readouterr().err


def test_console_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "mix"
    run = subprocess.run(
        [sys.executable, "-m", "xllama", "data", "build", "--sample", "--lang", "de", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and (out / "manifest.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "xllama", "data", "build", "--sample", "--lang", "xx", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
