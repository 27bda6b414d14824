"""Monolingual corpora (xllama.data.corpus): streamed to disk, language-checked, the shared manifest layout."""

from __future__ import annotations

import pytest

from xllama.errors import XllamaError

PAIRS = "data/parallel/alma-human-written"


def test_corpus_is_on_disk_grouped_by_language_with_its_provenance(shared):
    from xllama.data.corpus import build_corpus

    de, zh = str(shared / PAIRS / "deen/train.de-en.de"), str(shared / PAIRS / "zhen/train.zh-en.zh")
    dataset, manifest = build_corpus({"de": [de], "zh": [zh]}, max_documents=120, progress=False)
    assert dataset.cache_files and dataset["lang"] == ["de"] * 120 + ["zh"] * 120
    lines = (shared / PAIRS / "deen/train.de-en.de").read_text(encoding="utf-8").splitlines()
    assert dataset["text"][:5] == [line.strip() for line in lines[:5]]
    assert manifest["languages"]["de"]["documents"] == 120 and manifest["languages"]["de"]["sources"][0]["files"]
    check = {r["source"]: r for r in manifest["language_check"]}
    assert check["data.monolingual.de"]["detected"]["de"] > 0.9 and not check["data.monolingual.zh"]["mismatch"]


def test_a_mislabelled_corpus_stops_unless_accepted(shared):
    from xllama.data.corpus import build_corpus

    english = str(shared / PAIRS / "deen/train.de-en.en")
    with pytest.raises(XllamaError, match=r"data\.monolingual\.de \(.*train\.de-en\.en\): labelled de \(German\), "
                                          r"but lingua detects en 9\d%"):
        build_corpus({"de": [english]}, max_documents=100, progress=False)
    _, manifest = build_corpus({"de": [english]}, max_documents=100, accept_language_mismatch=True, progress=False)
    assert manifest["language_check"][0]["mismatch"] is True


def test_a_hub_corpus_needs_a_limit():
    from xllama.data.corpus import build_corpus

    with pytest.raises(XllamaError, match=r"data\.monolingual\.de: a Hub corpus \(hf:owner/big\) .* set max_documents"):
        build_corpus({"de": ["hf:owner/big"]}, progress=False)


def test_every_data_build_writes_one_manifest_layout(shared, tmp_path):
    """Mixes, corpora, ALMA's stage-2 text and CPO's triplets: format, version, examples, columns first, then the
    build's own sections, then content_hash, xllama_version and build_seconds."""
    import json

    from xllama.alma.cpo import load_preferences, parse_spec
    from xllama.data.corpus import build_corpus
    from xllama.data.mix import MixSpec, build_mix

    triplets = tmp_path / "triplets.jsonl"
    triplets.write_text(json.dumps({"direction": "de-en", "source": "Hallo Welt.", "preferred": "Hello world.",
                                    "dispreferred": "Hi."}) + "\n", encoding="utf-8")
    manifests = [
        build_mix(MixSpec.from_dict({"mix": "alpaca", "sample": True}), progress=False)[1],
        build_corpus({"de": [str(shared / PAIRS / "deen/train.de-en.de")]}, max_documents=10, progress=False)[1],
        load_preferences(parse_spec({"preference": str(triplets)}))[1],
    ]
    for manifest in manifests:
        keys = list(manifest)
        assert keys[:4] == ["format", "version", "examples", "columns"], keys
        assert keys[-3:] == ["content_hash", "xllama_version", "build_seconds"], keys
        assert len(manifest["content_hash"]) == 32 and manifest["examples"] > 0


def test_a_failed_corpus_build_leaves_no_scratch(shared, tmp_path, monkeypatch):
    from xllama.data.corpus import build_corpus

    monkeypatch.setenv("XLLAMA_CACHE", str(tmp_path / "cache"))
    english = str(shared / PAIRS / "deen/train.de-en.en")
    with pytest.raises(XllamaError, match="labelled de"):
        build_corpus({"en": [english], "de": [english]}, max_documents=50, progress=False)
    assert list((tmp_path / "cache/tmp").iterdir()) == []


def test_alma_stage2_reads_the_validation_split_of_hub_pairs(tmp_path, monkeypatch):
    """``valid: {de-en: hf:...}`` reads the corpus's validation split (the mixer's ``hub_split``), the training
    pairs its train split, both from a local mirror of the Hub's parquet export."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xllama.alma.data import load_parallel_text, parse_spec

    german = ["Das Haus ist sehr alt und groß.", "Wir gehen morgen früh in die Stadt.", "Der Zug kommt heute spät an.",
              "Ich lese gern Bücher über Geschichte.", "Die Kinder spielen im Garten hinter dem Haus."]
    english = ["The house is very old and big.", "We are going to town early tomorrow.", "The train arrives late today.",
               "I like reading books about history.", "The children are playing in the garden behind the house."]
    for split, rows in (("train", range(0, 3)), ("validation", range(3, 5))):
        folder = tmp_path / "owner/pairs/de-en" / split
        folder.mkdir(parents=True)
        records = [{"de": german[i], "en": english[i]} for i in rows]
        pq.write_table(pa.table({"translation": records}), folder / "0000.parquet")
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(tmp_path))
    monkeypatch.setenv("XLLAMA_CACHE", str(tmp_path / "cache"))
    spec = parse_spec({"parallel": {"de-en": "hf:owner/pairs:de-en"}, "valid": {"de-en": "hf:owner/pairs:de-en"},
                       "accept_language_mismatch": True}, "alma-parallel")  # 3 sentences: too few to judge
    text, manifest = load_parallel_text(spec)
    rows = text.to_dict()
    train = {x for x, s in zip(rows["input"], rows["split"]) if s == "train"}
    valid = {x for x, s in zip(rows["input"], rows["split"]) if s == "valid"}
    assert train == set(german[:3]) | set(english[:3]) and valid == set(german[3:]) | set(english[3:])
    assert manifest["valid"]["spec"]["hub_split"] == "validation" and manifest["spec"]["hub_split"] == "train"
