"""The language check: a source whose text is mostly not its labelled language stops the build."""

from __future__ import annotations

import json
import shutil

import pytest

from xllama.data.langid import LanguageChecker, sample_texts
from xllama.data.mix import MixSpec, build_mix
from xllama.data.sample import SAMPLE_DIR
from xllama.errors import XllamaError

ALPACA_TINY = "data/instructions/alpaca-tiny/alpaca_tiny.json"


def test_detected_shares_and_the_error_names_source_label_and_languages():
    checker = LanguageChecker(["zh"])
    english = ["The weather is nice today and we are going to the park.", "Give three tips for staying healthy."] * 50
    record = checker.check("instructions.en", "en", english)
    assert record["detected"] == {"en": 1.0} and record["sampled"] == 100 and not record["mismatch"]
    with pytest.raises(XllamaError, match=r"instructions\.zh \(alpaca\.json\): labelled zh \(Chinese\), but lingua "
                                          r"detects en 100% in 100 sampled texts \(languages considered: en, zh\).*"
                                          r"--accept-language-mismatch"):
        checker.check("instructions.zh", "zh", english, "alpaca.json")
    accepted = LanguageChecker(["zh"], accept_mismatch=True).check("instructions.zh", "zh", english)
    assert accepted["mismatch"] and accepted["detected"] == {"en": 1.0}


def test_sample_is_spread_and_bounded():
    texts = [str(i) for i in range(1000)]
    picked = sample_texts(texts, 200)
    assert len(picked) == 200 and picked[:3] == ["0", "5", "10"]
    assert sample_texts(["", "  ", "a"]) == ["a"]


def test_english_alpaca_passed_as_chinese_stops_the_build(shared, tmp_path):
    from xllama.cli import main

    tiny = str(shared / ALPACA_TINY)
    zh = str(SAMPLE_DIR / "instructions.en-zh.json")
    pairs = str(SAMPLE_DIR / "pairs.en-zh")
    out = tmp_path / "mix"
    argv = ["data", "build", "--lang", "zh", "--instructions", f"en={zh}", "--instructions", f"zh={tiny}",
            "--parallel", f"en-zh={pairs}", "--no-guard", "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mix")]
    assert main([*argv, "--accept-language-mismatch"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    check = {r["source"]: r for r in manifest["language_check"]}
    assert check["instructions.zh"]["mismatch"] and check["instructions.zh"]["detected"]["en"] > 0.9
    assert not check["instructions.en"]["mismatch"] and not check["parallel.en-zh (zh side)"]["mismatch"]


def test_swapped_pair_files_are_caught(tmp_path):
    for side, other in (("en", "zh"), ("zh", "en")):  # pairs.en-zh.en holds Chinese, .zh English
        shutil.copy(SAMPLE_DIR / f"pairs.en-zh.{side}", tmp_path / f"pairs.en-zh.{other}")
    spec = MixSpec.from_dict({"sample": True, "languages": ["zh"], "parallel": {"en-zh": str(tmp_path / "pairs.en-zh")}})
    with pytest.raises(XllamaError, match=r"parallel\.en-zh \(en side\) \(.*pairs\.en-zh\): labelled en \(English\), "
                                          r"but lingua detects zh 100%"):
        build_mix(spec, progress=False)


def test_a_correct_sample_build_records_the_shares():
    spec = MixSpec.from_dict({"sample": True, "mix": "m-llama", "languages": ["zh", "de"]})
    _, manifest = build_mix(spec, progress=False)
    sources = [r["source"] for r in manifest["language_check"]]
    assert sources == ["instructions.en", "instructions.zh", "instructions.de", "parallel.en-zh (en side)",
                       "parallel.en-zh (zh side)", "parallel.en-de (en side)", "parallel.en-de (de side)"]
    for record in manifest["language_check"]:
        assert not record["mismatch"] and record["detected"][record["label"]] >= 0.9, record
