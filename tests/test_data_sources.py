"""The data loaders on real shared files, on files of the Hub's layout (through XLLAMA_HUB_MIRROR), and on
the bad inputs the issue lists."""

from __future__ import annotations

import gzip
import json

import pytest

from xllama.data.sources import (
    load_guard,
    load_instructions,
    load_parallel,
    natural_key,
    split_sentences,
    text_length,
)
from xllama.errors import XllamaError

INSTR = "data/instructions"
ALMA = "data/parallel/alma-human-written"


# ---------------------------------------------------------------------------------------------- instructions


def test_alpaca_json_array(shared):
    data = load_instructions(str(shared / INSTR / "alpaca-tiny/alpaca_tiny.json"), "en")
    raw = json.loads((shared / INSTR / "alpaca-tiny/alpaca_tiny.json").read_text())
    assert len(data) == len(raw) == 100
    assert (data.instruction[0], data.input[0], data.output[0]) == (
        raw[0]["instruction"],
        raw[0]["input"],
        raw[0]["output"],
    )
    assert data.origin[5].endswith("alpaca_tiny.json:record 6")
    assert data.provenance["schema"] == "alpaca"
    assert data.provenance["files"][0]["bytes"] > 0 and len(data.provenance["files"][0]["blake2b"]) == 32


def test_bilingual_records_pick_the_requested_side(shared):
    part = shared / INSTR / "alpaca-en-zh/alpaca_chinese_part_0.json"
    raw = json.loads(part.read_text())
    en, zh = load_instructions(str(part), "en"), load_instructions(str(part), "zh")
    assert len(en) == len(zh) == len(raw)
    assert en.instruction[0] == raw[0]["en_instruction"] and zh.instruction[0] == raw[0]["zh_instruction"]
    assert zh.output[3] == raw[3]["zh_output"]
    assert zh.provenance["schema"] == "bilingual"
    with pytest.raises(XllamaError, match=r"instructions in en, zh but not in de"):
        load_instructions(str(part), "de")


def test_folder_of_parts_in_natural_order(shared):
    folder = shared / INSTR / "alpaca-en-zh"
    data = load_instructions(str(folder), "zh")
    assert len(data) == 52002
    files = [f["path"] for f in data.provenance["files"]]
    assert len(files) == 53
    assert files[1].endswith("part_1.json") and files[2].endswith("part_2.json") and files[10].endswith("part_10.json")
    first_of_part_1 = json.loads((folder / "alpaca_chinese_part_1.json").read_text())[0]
    n0 = len(json.loads((folder / "alpaca_chinese_part_0.json").read_text()))
    assert data.instruction[n0] == first_of_part_1["zh_instruction"]


def test_prompt_response_jsonl_folder(shared):
    folder = shared / INSTR / "alpaca-vi"
    data = load_instructions(str(folder), "vi")
    assert len(data) == 51092
    assert [f["path"].rsplit("_", 1)[1] for f in data.provenance["files"]][:3] == ["1.jsonl", "2.jsonl", "3.jsonl"]
    first = json.loads((folder / "vi_alpaca_reduced_1.jsonl").open().readline())
    assert (data.instruction[0], data.input[0], data.output[0]) == (first["prompt"], "", first["response"])
    assert data.origin[0].endswith("vi_alpaca_reduced_1.jsonl:line 1")
    assert data.provenance["schema"] == "prompt-response"


def test_aligned_german_alpaca(shared):
    en = load_instructions(str(shared / INSTR / "alpaca-de/tasks_translated_en.json"), "en")
    de = load_instructions(str(shared / INSTR / "alpaca-de/translated_tasks_de_openai_12k.json"), "de")
    assert len(en) == len(de) == 12000


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "hub_style.json"
    path.write_text(
        '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "input": "", "output": "d"}\n'
    )
    data = load_instructions(str(path), "en")
    assert data.output == ["b", "d"] and data.origin[1].endswith("hub_style.json:line 2")


def test_natural_key():
    from pathlib import Path

    names = ["p_10.json", "p_2.json", "p_1.json"]
    assert sorted(names, key=lambda n: natural_key(Path(n))) == ["p_1.json", "p_2.json", "p_10.json"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "outp\n')
    with pytest.raises(XllamaError, match=r"bad\.jsonl: line 2: malformed JSON"):
        load_instructions(str(path), "en")


def test_malformed_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": oops}\n]\n')
    with pytest.raises(XllamaError, match=r"bad\.json: line 3, column \d+: malformed JSON"):
        load_instructions(str(path), "en")


def test_missing_file_and_unknown_formats(tmp_path):
    with pytest.raises(XllamaError, match=r"file not found: .*nope\.json"):
        load_instructions(str(tmp_path / "nope.json"), "en")
    xml = tmp_path / "data.xml"
    xml.write_text("<a/>")
    with pytest.raises(XllamaError, match=r"unknown format .*data\.xml"):
        load_instructions(str(xml), "en")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(XllamaError, match=r"odd\.json: record 1: unknown instruction record format"):
        load_instructions(str(odd), "en")
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(XllamaError, match=r"missing\.json: record 2: missing field 'output'"):
        load_instructions(str(missing), "en")
    with pytest.raises(XllamaError, match=r"unknown language code 'xx'; known codes: .*zh"):
        load_instructions(str(missing), "xx")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(XllamaError, match=r"no instruction records"):
        load_instructions(str(empty), "en")


# ---------------------------------------------------------------------------------------------- parallel


def test_moses_folder_prefix_and_single_file(shared):
    folder = shared / ALMA / "zhen"
    data = load_parallel(str(folder), "en", "zh")
    assert len(data) == 15406
    zh_lines = (folder / "train.zh-en.zh").read_text().split("\n")
    en_lines = (folder / "train.zh-en.en").read_text().split("\n")
    assert data.source[7] == en_lines[7] and data.target[7] == zh_lines[7]
    assert data.provenance["format"] == "moses" and len(data.provenance["files"]) == 2
    by_prefix = load_parallel(str(folder / "train.zh-en"), "zh", "en")
    assert by_prefix.source[7] == zh_lines[7] and by_prefix.target[7] == en_lines[7]
    by_file = load_parallel(str(folder / "train.zh-en.zh"), "en", "zh")
    assert by_file.source[:5] == data.source[:5]


def test_different_line_counts_name_both_files_and_counts(tmp_path):
    (tmp_path / "train.de-en.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "train.de-en.en").write_text("one\ntwo\n")
    with pytest.raises(XllamaError) as e:
        load_parallel(str(tmp_path), "en", "de")
    message = str(e.value)
    assert "train.de-en.en has 2 lines" in message and "train.de-en.de has 3" in message


def test_prefix_missing_one_side(tmp_path):
    (tmp_path / "corpus.zh").write_text("你好\n")
    with pytest.raises(XllamaError, match=r"file not found: .*corpus\.en"):
        load_parallel(str(tmp_path / "corpus"), "en", "zh")


def test_json_array_of_translation_records(shared):
    path = shared / ALMA / "zhen/valid.zh-en.json"
    data = load_parallel(str(path), "zh", "en")
    raw = json.loads(path.read_text())
    assert len(data) == len(raw) == 1002
    assert data.source[0] == raw[0]["translation"]["zh"] and data.target[0] == raw[0]["translation"]["en"]


def test_jsonl_tsv_and_flat_records_from_real_pairs(shared, tmp_path):
    folder = shared / ALMA / "deen"
    de = (folder / "train.de-en.de").read_text().split("\n")[:50]
    en = (folder / "train.de-en.en").read_text().split("\n")[:50]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"translation": {"de": d, "en": e}}) + "\n" for d, e in zip(de, en)))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{e}\t{d}\n" for d, e in zip(de, en)))
    headed = tmp_path / "headed.tsv"
    headed.write_text("de\ten\n" + "".join(f"{d}\t{e}\n" for d, e in zip(de, en)))
    flat = tmp_path / "flat.json.gz"
    with gzip.open(flat, "wt", encoding="utf-8") as f:
        json.dump([{"en": e, "de": d} for d, e in zip(de, en)], f)
    for path in (jsonl, tsv, headed, flat):
        data = load_parallel(str(path), "en", "de")
        assert data.source == en and data.target == de, path.name


def test_bad_parallel_records(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("a\tb\nonly one column\n")
    with pytest.raises(XllamaError, match=r"bad\.tsv: line 2: expected 2 tab-separated columns"):
        load_parallel(str(tsv), "en", "de")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"translation": {"en": "a", "de": "b"}}\n{"translation": {"en": "c"}}\n')
    with pytest.raises(XllamaError, match=r"bad\.jsonl: line 2: expected a en/de pair"):
        load_parallel(str(jsonl), "en", "de")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"translation": {"en": "a", "de": "b"}}\n\n{"translation": \n')
    with pytest.raises(XllamaError, match=r"broken\.jsonl: line 3: malformed JSON"):
        load_parallel(str(broken), "en", "de")
    with pytest.raises(XllamaError, match=r"file not found"):
        load_parallel(str(tmp_path / "nothing-here"), "en", "de")
    odd = tmp_path / "pairs.xlsx"
    odd.write_text("x")
    with pytest.raises(XllamaError, match=r"unknown format .*pairs\.xlsx"):
        load_parallel(str(odd), "en", "de")


# ---------------------------------------------------------------------------------------------- Hub (mirror)


def _parquet(path, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.fixture
def hub_mirror(tmp_path, monkeypatch):
    """Local files laid out like the Hub repos (see HUB_SOURCES.md), served through XLLAMA_HUB_MIRROR."""
    mirror = tmp_path / "mirror"
    _parquet(
        mirror / "tatsu-lab/alpaca/default/train/0000.parquet",
        {
            "instruction": ["Name a colour.", "Add the numbers."],
            "input": ["", "2 and 3"],
            "output": ["Blue.", "5"],
            "text": ["...", "..."],
        },
    )
    bactrian = mirror / "MBZUAI/Bactrian-X/data/zh.json.gz"
    bactrian.parent.mkdir(parents=True)
    with gzip.open(bactrian, "wt", encoding="utf-8") as f:
        for i, (rid, ins) in enumerate(
            [("alpaca-0", "说出一种颜色。"), ("dolly-0", "什么是光？"), ("alpaca-1", "把数字相加。")]
        ):
            f.write(
                json.dumps({"instruction": ins, "input": "", "id": rid, "output": f"答案{i}"}, ensure_ascii=False)
                + "\n"
            )
    _parquet(
        mirror / "sentence-transformers/parallel-sentences-wikimatrix/en-zh/train/0000.parquet",
        {
            "english": ["The cat sleeps.", "It rains today."],
            "non_english": ["猫在睡觉。", "今天下雨。"],
        },
    )
    _parquet(
        mirror / "Helsinki-NLP/news_commentary/en-zh/train/0000.parquet",
        {
            "id": ["0", "1"],
            "translation": [{"en": "Prices rose.", "zh": "价格上涨了。"}, {"en": "Trade fell.", "zh": "贸易下降了。"}],
        },
    )
    _parquet(
        mirror / "Helsinki-NLP/opus-100/el-en/train/0000.parquet",
        {
            "translation": [{"el": "Καλημέρα.", "en": "Good morning."}],
        },
    )
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(mirror))
    _private_cache(monkeypatch, tmp_path)
    return mirror


def _private_cache(monkeypatch, tmp_path):
    """Keep the json/parquet builders' cache out of the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_hub_instructions_plain_and_bactrian(hub_mirror):
    alpaca = load_instructions("hf:tatsu-lab/alpaca", "en")
    assert alpaca.output == ["Blue.", "5"] and alpaca.input == ["", "2 and 3"]
    assert alpaca.provenance["hub"] == "tatsu-lab/alpaca"
    zh = load_instructions("hf:MBZUAI/Bactrian-X", "zh")  # config defaults to the language
    assert zh.instruction == ["说出一种颜色。", "把数字相加。"]  # the Dolly half is dropped
    assert zh.provenance["file_or_split"] == "data/zh.json.gz"
    with pytest.raises(XllamaError, match=r"no file 'data/vi\.json\.gz'"):
        load_instructions("hf:MBZUAI/Bactrian-X:vi", "vi")


def test_hub_parallel_corpora(hub_mirror):
    wm = load_parallel("hf:sentence-transformers/parallel-sentences-wikimatrix", "en", "zh")
    assert wm.source == ["The cat sleeps.", "It rains today."] and wm.target == ["猫在睡觉。", "今天下雨。"]
    assert wm.provenance["config"] == "en-zh"
    back = load_parallel("hf:sentence-transformers/parallel-sentences-wikimatrix:en-zh", "zh", "en")
    assert back.source == ["猫在睡觉。", "今天下雨。"]
    nc = load_parallel("hf:Helsinki-NLP/news_commentary", "en", "zh")
    assert nc.source == ["Prices rose.", "Trade fell."] and nc.target[1] == "贸易下降了。"
    opus = load_parallel("hf:Helsinki-NLP/opus-100", "en", "el")
    assert (opus.source, opus.target) == (["Good morning."], ["Καλημέρα."])
    with pytest.raises(XllamaError, match=r"opus-100"):
        load_parallel("hf:Helsinki-NLP/opus-100", "en", "hi")  # not in the mirror


# ---------------------------------------------------------------------------------------------- evaluation sets


def test_guard_flores_folders(shared):
    for folder in ("flores101/devtest", "flores200/devtest", "flores101"):
        guard = load_guard(str(shared / "data/eval" / folder), ["zh"])
        assert guard.kind == "flores" and guard.provenance["languages"] == {"en": 1012, "zh": 1012}
    eng = (shared / "data/eval/flores101/devtest/eng.devtest").read_text().split("\n")[0]
    assert eng in guard.texts


def test_guard_squad_file_and_folder(shared):
    folder = shared / "data/eval/xquad"
    guard = load_guard(str(folder), ["de"])
    assert guard.kind == "squad" and set(guard.provenance["languages"]) == {"en", "de"}
    doc = json.loads((folder / "xquad.de.json").read_text())
    paragraph = doc["data"][0]["paragraphs"][0]
    assert paragraph["context"] in guard.texts and paragraph["qas"][0]["question"] in guard.texts
    single = load_guard(str(folder / "xquad.zh.json"), ["zh"])
    assert len(single.texts) == 240 + 1190  # contexts + questions


def test_guard_wmt_json_and_text(shared, tmp_path):
    path = shared / ALMA / "deen/valid.de-en.json"
    guard = load_guard(str(path), ["de"])
    raw = json.loads(path.read_text())
    assert guard.kind == "wmt" and len(guard.texts) == 2 * len(raw)
    assert raw[0]["translation"]["de"] in guard.texts and raw[0]["translation"]["en"] in guard.texts
    text = tmp_path / "held_out.txt"
    text.write_text("First sentence here.\n\nSecond one.\n")
    assert load_guard(str(text), ["zh"]).texts == ["First sentence here.", "Second one."]
    bad = tmp_path / "eval.csv"
    bad.write_text("a,b\n")
    with pytest.raises(XllamaError, match=r"unknown format for evaluation set"):
        load_guard(str(bad), ["zh"])
    with pytest.raises(XllamaError, match=r"file not found"):
        load_guard(str(tmp_path / "missing"), ["zh"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(XllamaError, match=r"unknown evaluation-set folder"):
        load_guard(str(tmp_path / "empty_dir"), ["zh"])


def test_guard_named_flores_through_the_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    for code, sentences in (("eng", ["An English test sentence."]), ("zho_simpl", ["一个中文测试句子。"])):
        _parquet(mirror / f"gsarti/flores_101/{code}/devtest/0000.parquet", {"id": [1], "sentence": sentences})
    monkeypatch.setenv("XLLAMA_HUB_MIRROR", str(mirror))
    monkeypatch.delenv("XLLAMA_DATA", raising=False)
    _private_cache(monkeypatch, tmp_path)
    guard = load_guard("flores101", ["zh"])
    assert sorted(guard.texts) == sorted(["An English test sentence.", "一个中文测试句子。"])


def test_text_length_and_sentences():
    assert text_length("abc") == 3 and text_length("中文") == 6
    assert split_sentences("One. Two! 三。四？ Five") == ["One.", "Two!", "三。", "四？", "Five"]
