"""The mixer: spec validation, named mixes, sizes, cleaning, the contamination guard, determinism, on disk."""

from __future__ import annotations

import json

import pytest

from xllama.data.mix import COLUMNS, MixSpec, build_mix, load_mix, normalize, write_mix
from xllama.data.sample import SAMPLE_DIR, sample_spec
from xllama.errors import XllamaError
from xllama.prompts import TRANSLATION_TEMPLATES, translation_instruction

SAMPLE_EN_ZH = str(SAMPLE_DIR / "instructions.en-zh.json")


def build(d: dict):
    return build_mix(MixSpec.from_dict(d, where="recipe.data"), progress=False)


# ---------------------------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    "d, message",
    [
        ({"colour": "blue"}, r"recipe\.data\.colour: unknown key"),
        ({"mix": "x-lama"}, r"recipe\.data\.mix: expected one of x-llama, m-llama, alpaca, custom"),
        ({"directions": "left"}, r"recipe\.data\.directions: expected one of en-x, x-en, both"),
        ({"seed": "7"}, r"recipe\.data\.seed: expected an integer"),
        ({"dedup": "yes"}, r"recipe\.data\.dedup: expected true or false"),
        ({"languages": ["zh", "xx"]}, r"recipe\.data\.languages\[1\]: unknown language code 'xx'; known codes: .*zh"),
        ({"languages": ["zh", "de"]}, r"recipe\.data\.languages: mix x-llama takes exactly one target language"),
        (
            {"languages": ["zh"], "instructions": {"en": SAMPLE_EN_ZH}},
            r"recipe\.data\.instructions\.zh: mix x-llama needs",
        ),
        (
            {"languages": ["zh"], "instructions": {"en": "a", "zh": "b"}},
            r"recipe\.data\.parallel\.en-zh: mix x-llama needs",
        ),
        ({"instructions": {"en": 3}}, r"recipe\.data\.instructions\.en: expected a location"),
        ({"parallel": {"enzh": "x"}}, r"recipe\.data\.parallel\.enzh: bad language pair"),
        ({"mix": "custom"}, r"recipe\.data: a custom mix needs instructions or parallel data"),
        ({"max_length_ratio": 0.5}, r"recipe\.data\.max_length_ratio: expected a number >= 1"),
    ],
)
def test_spec_errors_name_the_key(d, message):
    with pytest.raises(XllamaError, match=message):
        MixSpec.from_dict(d, where="recipe.data")


def test_sizes_are_validated_per_source():
    base = {"sample": True, "languages": ["zh"]}
    with pytest.raises(XllamaError, match=r"recipe\.data\.sizes\.alpaca_zh: a fraction must be in \(0, 1\]"):
        MixSpec.from_dict({**base, "sizes": {"alpaca_zh": 1.5}}, where="recipe.data")
    with pytest.raises(XllamaError, match=r"recipe\.data\.sizes\.alpaca_zh: expected a count"):
        MixSpec.from_dict({**base, "sizes": {"alpaca_zh": "many"}}, where="recipe.data")
    with pytest.raises(XllamaError, match=r"recipe\.data\.sizes\.alpaca_de: unknown source; .*alpaca_en, alpaca_zh"):
        MixSpec.from_dict({**base, "sizes": {"alpaca_de": 10}}, where="recipe.data")
    with pytest.raises(XllamaError, match=r"recipe\.data\.parallel_sizes\.de: no such parallel source"):
        MixSpec.from_dict({**base, "parallel_sizes": {"de": 10}}, where="recipe.data")
    spec = MixSpec.from_dict({**base, "sizes": {"alpaca_zh": 0.5, "alpaca_en": 10}, "parallel_sizes": {"zh": 20}})
    assert spec.sizes == {"alpaca_zh": 0.5, "alpaca_en": 10} and spec.parallel_sizes == {"en-zh": 20}
    assert MixSpec.from_dict(spec.to_dict()) == spec  # YAML round trip


def test_allocation_fills_parallel_sizes(tmp_path):
    alloc = tmp_path / "alloc.json"
    alloc.write_text(json.dumps({"allocation": {"zh": 30, "de": 20, "ar": 5}, "budget": 55, "law": "power"}))
    spec = MixSpec.from_dict(
        {
            "sample": True,
            "mix": "m-llama",
            "languages": ["zh", "de"],
            "allocation": str(alloc),
            "parallel_sizes": {"de": 10},
        }
    )
    assert spec.parallel_sizes == {"en-de": 10, "en-zh": 30}  # explicit sizes win; ar is not in this mix
    _, manifest = build_mix(spec, progress=False)
    assert manifest["sizes"]["translation_en-zh"]["used"] == 30 and manifest["sizes"]["translation_en-de"]["used"] == 10
    assert manifest["by_direction"] == {"en-de": 10, "en-zh": 30} and manifest["allocation"] == str(alloc)
    alloc.write_text(json.dumps({"sizes": {}}))
    with pytest.raises(XllamaError, match=r"no 'allocation' mapping"):
        MixSpec.from_dict({"sample": True, "languages": ["zh"], "allocation": str(alloc)})


def test_sample_spec_languages():
    assert sample_spec(["zh"]).mix == "x-llama" and sample_spec(["zh", "de"]).mix == "m-llama"
    with pytest.raises(XllamaError, match=r"no data for ar; sample languages: zh, de"):
        sample_spec(["ar"])


# ---------------------------------------------------------------------------------------------- building


def test_x_llama_sample_mix_columns_and_translation_examples():
    dataset, manifest = build_mix(sample_spec(["zh"]), progress=False)
    assert tuple(dataset.column_names) == COLUMNS
    assert all(dataset.features[c].dtype == "string" for c in COLUMNS)
    rows = dataset.to_list()
    assert manifest["examples"] == len(rows) == sum(manifest["by_source"].values())
    assert set(manifest["by_source"]) == {"alpaca_en", "alpaca_zh", "translation"}
    pairs = dict(
        zip(
            (SAMPLE_DIR / "pairs.en-zh.en").read_text().splitlines(),
            (SAMPLE_DIR / "pairs.en-zh.zh").read_text().splitlines(),
        )
    )
    translations = [r for r in rows if r["source"] == "translation"]
    assert translations and all(r["direction"] == "en-zh" and r["lang"] == "zh" for r in translations)
    for r in translations:
        assert r["output"] == pairs[r["input"]]
        assert r["instruction"] == translation_instruction("en", "zh", key=r["input"])
    templates = {t.format(src="English", tgt="Chinese") for t in TRANSLATION_TEMPLATES}
    assert {r["instruction"] for r in translations} <= templates and len({r["instruction"] for r in translations}) > 5
    assert all(r["direction"] == "" for r in rows if r["source"] != "translation")
    assert {r["lang"] for r in rows if r["source"] == "alpaca_zh"} == {"zh"}
    # shuffled: the sources are interleaved, not in blocks
    first_sources = [r["source"] for r in rows[:30]]
    assert len(set(first_sources)) == 3


def test_directions_and_m_llama():
    _, forward = build_mix(sample_spec(["zh"]), progress=False)
    spec = sample_spec(["zh"])
    spec.directions = "x-en"
    reverse, manifest = build_mix(spec, progress=False)
    assert manifest["by_direction"] == {"zh-en": forward["by_direction"]["en-zh"]}
    row = next(r for r in reverse.to_list() if r["source"] == "translation")
    assert row["instruction"] == translation_instruction("zh", "en", key=row["input"]) and row["lang"] == "zh"
    spec.directions = "both"
    _, both = build_mix(spec, progress=False)
    n = forward["by_direction"]["en-zh"]
    assert both["by_direction"] == {"en-zh": n, "zh-en": n}
    _, multi = build_mix(sample_spec(["zh", "de"]), progress=False)
    assert set(multi["by_source"]) == {"alpaca_en", "alpaca_zh", "alpaca_de", "translation"}
    assert set(multi["by_direction"]) == {"en-zh", "en-de"}
    assert multi["by_lang"]["de"] == multi["by_source"]["alpaca_de"] + multi["by_direction"]["en-de"]
    _, alpaca = build_mix(sample_spec(["zh"], mix="alpaca"), progress=False)
    assert alpaca["by_source"] == {"alpaca_en": 60}


def test_same_seed_same_hash_different_seed_different_hash():
    hashes = [build_mix(sample_spec(["zh"], seed=s), progress=False)[1]["content_hash"] for s in (1, 1, 2)]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]


def test_counts_fractions_nested_subsamples_and_shortfall():
    base = {"sample": True, "languages": ["zh"], "seed": 3}
    small, m_small = build({**base, "sizes": {"alpaca_en": 10, "alpaca_zh": 0.5}, "parallel_sizes": {"zh": 20}})
    assert m_small["by_source"] == {"alpaca_en": 10, "alpaca_zh": 30, "translation": 20}
    assert m_small["sizes"]["alpaca_zh"] == {"requested": 0.5, "wanted": 30, "available": 60, "used": 30,
                                             "drawn": 30, "repeated": 0, "dropped": 30}
    large, _ = build({**base, "sizes": {"alpaca_en": 25}, "parallel_sizes": {"zh": 40}})

    def outputs(ds, source):
        return {r["output"] for r in ds.to_list() if r["source"] == source}

    assert outputs(small, "alpaca_en") < outputs(large, "alpaca_en")  # nested samples
    assert outputs(small, "translation") < outputs(large, "translation")
    _, short = build({**base, "parallel_sizes": {"zh": 500}})
    assert short["sizes"]["translation_en-zh"]["used"] == short["sizes"]["translation_en-zh"]["available"] < 500


def test_cleaning_counts(tmp_path):
    pairs = [
        ("A perfectly normal sentence.", "一个完全正常的句子。"),
        ("A perfectly normal sentence.", "一个完全正常的句子。"),  # duplicate
        ("  A perfectly   normal sentence. ", "一个完全正常的句子。"),  # duplicate after whitespace normalisation
        ("   ", "空的英文。"),  # empty side
        ("Too long " * 200, "太长了。"),  # over max_length
        ("This English side is much much longer than the other.", "短。"),  # length ratio
        ("Held out evaluation sentence number one.", "另一句话。"),  # guard (source side)
        ("Another fine sentence.", "评测集中的第二个句子，不能用于训练。"),  # guard (target side)
        ("The last good sentence.", "最后一个好句子。"),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"translation": {"en": a, "zh": b}}, ensure_ascii=False) + "\n" for a, b in pairs)
    )
    guard = tmp_path / "eval.txt"
    guard.write_text("Held out evaluation sentence number one.\n评测集中的第二个句子，不能用于训练。\n")
    instructions = tmp_path / "instr.json"
    instructions.write_text(
        json.dumps(
            [
                {"instruction": "Say hi.", "input": "", "output": "Hi."},
                {"instruction": "Say hi.", "input": "", "output": "Hi."},
                {"instruction": "Empty answer.", "input": "", "output": "  "},
                {"instruction": "Repeat.", "input": "Held out evaluation sentence number one.", "output": "Done."},
                {
                    "instruction": "Explain.",
                    "input": "",
                    "output": "Some text. Held out evaluation sentence number one. More.",
                },
            ]
        )
    )
    spec = {
        "mix": "custom",
        "instructions": {"en": str(instructions)},
        "parallel": {"en-zh": str(path)},
        "guard": [str(guard)],
    }
    dataset, manifest = build(spec)
    assert manifest["removed_by_source"]["translation_en-zh"] == {"contamination": 2, "duplicates": 2, "filtered": 3}
    assert manifest["removed_by_source"]["alpaca_en"] == {"contamination": 2, "duplicates": 1, "filtered": 1}
    assert manifest["removed"] == {"contamination": 4, "duplicates": 3, "filtered": 4}
    assert manifest["examples"] == 3 and manifest["by_source"] == {"alpaca_en": 1, "translation": 2}
    _, loose = build({**spec, "dedup": False, "guard_enabled": False, "max_length": None, "max_length_ratio": None})
    assert loose["removed"] == {"contamination": 0, "duplicates": 0, "filtered": 2}
    with pytest.raises(XllamaError, match=r"the mix is empty"):
        build({"mix": "custom", "parallel": {"en-zh": str(path)}, "min_length": 10_000})


def test_guard_removes_flores_from_real_alma_pairs(shared):
    """ALMA's zh-en training pairs contain FLORES-200 devtest: all of it must go, and nothing else breaks."""
    part = str(shared / "data/instructions/alpaca-en-zh/alpaca_chinese_part_0.json")
    flores = shared / "data/eval/flores101/devtest"
    spec = {
        "languages": ["zh"],
        "instructions": {"en": part, "zh": part},
        "parallel": {"en-zh": str(shared / "data/parallel/alma-human-written/zhen")},
        "guard": [str(flores)],
    }
    dataset, manifest = build(spec)
    assert manifest["removed"]["contamination"] >= 1012
    assert manifest["contamination_by_guard"] == {str(flores): manifest["removed"]["contamination"]}
    assert manifest["contamination_samples"][0]["origin"].startswith(str(shared / "data/parallel"))
    held_out = {
        normalize(s) for code in ("eng", "zho_simpl") for s in (flores / f"{code}.devtest").read_text().splitlines()
    }
    columns = dataset.to_dict()
    assert not held_out & {normalize(t) for t in columns["input"] + columns["output"]}
    _, unguarded = build({**spec, "guard_enabled": False})
    assert unguarded["removed"]["contamination"] == 0
    assert (
        unguarded["by_source"]["translation"] - manifest["by_source"]["translation"]
        == manifest["removed"]["contamination"]
    )


# ---------------------------------------------------------------------------------------------- on disk


def test_write_and_load_mix(tmp_path):
    dataset, manifest = build_mix(sample_spec(["de"]), progress=False)
    out = tmp_path / "mix"
    write_mix(dataset, manifest, out, progress=False)
    loaded, loaded_manifest = load_mix(out)
    assert loaded.to_dict() == dataset.to_dict() and loaded_manifest == manifest
    for key in (
        "examples",
        "by_source",
        "by_lang",
        "by_direction",
        "removed",
        "seed",
        "content_hash",
        "spec",
        "sources",
        "guard",
    ):
        assert key in loaded_manifest, key
    assert isinstance(loaded_manifest["examples"], int)
    assert set(loaded_manifest["removed"]) == {"contamination", "duplicates", "filtered"}
    with pytest.raises(XllamaError, match=r"already exists"):
        write_mix(dataset, manifest, out, progress=False)
    write_mix(dataset, manifest, out, overwrite=True, progress=False)  # replacing a mix is fine
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(XllamaError, match=r"is not an xllama mix; refusing"):
        write_mix(dataset, manifest, tmp_path / "notes", overwrite=True, progress=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"
    with pytest.raises(XllamaError, match=r"is not an xllama mix"):
        load_mix(tmp_path / "notes")
    with pytest.raises(XllamaError, match=r"mix directory not found"):
        load_mix(tmp_path / "nowhere")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import xllama.data.mix as mix

    dataset, manifest = build_mix(sample_spec(["zh"]), progress=False)

    def explode(dataset, manifest, tmp):
        (tmp / "partial.arrow").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(mix, "_save", explode)
    with pytest.raises(OSError):
        write_mix(dataset, manifest, tmp_path / "mix", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- weighting


def test_temperature_shares_follow_the_mt5_convention():
    from xllama.data.sample import allocate, language_shares

    sizes = {"zh": 9000, "sw": 1000}
    assert language_shares(sizes, 1.0) == pytest.approx({"zh": 0.9, "sw": 0.1})  # natural proportions
    flat = language_shares(sizes, 5.0)  # p ~ n^(1/5)
    assert flat["zh"] == pytest.approx(9 ** 0.2 / (9 ** 0.2 + 1)) and 0.5 < flat["zh"] < 0.9
    assert language_shares(sizes, 1000.0)["sw"] == pytest.approx(0.5, abs=0.01)
    assert language_shares(sizes, weights={"zh": 1, "sw": 3}) == {"zh": 0.25, "sw": 0.75}
    assert allocate({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10) == {"a": 4, "b": 3, "c": 3}  # adds up exactly


def test_weights_up_and_down_sample_with_accounting():
    base = {"sample": True, "mix": "m-llama", "languages": ["zh", "de"], "seed": 5}
    _, plain = build(base)
    available = {k: v["available"] for k, v in plain["sizes"].items()}
    ds, m = build({**base, "weights": {"zh": 3, "de": 1}})
    for kind in ("alpaca", "translation_en"):
        zh, de = m["sizes"][f"{kind}_zh" if kind == "alpaca" else "translation_en-zh"], \
            m["sizes"][f"{kind}_de" if kind == "alpaca" else "translation_en-de"]
        total = zh["available"] + de["available"]
        assert zh["drawn"] + de["drawn"] == total and abs(zh["drawn"] - 3 * de["drawn"]) <= 3
        assert zh["repeated"] == zh["drawn"] - zh["available"] > 0 and zh["dropped"] == 0  # up-sampled
        assert de["dropped"] == de["available"] - de["drawn"] > 0 and de["repeated"] == 0  # down-sampled
    assert m["sizes"]["alpaca_en"] == {**m["sizes"]["alpaca_en"], "drawn": available["alpaca_en"], "repeated": 0}
    # repeats survive de-duplication: the mix has exactly the drawn rows
    assert m["by_source"]["alpaca_zh"] == m["sizes"]["alpaca_zh"]["drawn"]
    assert m["spec"]["weights"] == {"zh": 3.0, "de": 1.0}
    with pytest.raises(XllamaError, match=r"mix\.weights: no weight for de"):
        MixSpec.from_dict({**base, "weights": {"zh": 1}})
    with pytest.raises(XllamaError, match=r"mix: give weights .* or temperature .*, not both"):
        MixSpec.from_dict({**base, "weights": {"zh": 1, "de": 1}, "temperature": 2})
    with pytest.raises(XllamaError, match=r"mix\.temperature: expected a positive number"):
        MixSpec.from_dict({**base, "temperature": 0})


def test_explicit_upsampling():
    base = {"sample": True, "languages": ["zh"], "sizes": {"alpaca_zh": 100}}
    _, short = build(base)
    assert short["sizes"]["alpaca_zh"]["drawn"] == short["sizes"]["alpaca_zh"]["available"] < 100
    _, up = build({**base, "upsample": True})
    size = up["sizes"]["alpaca_zh"]
    assert (size["drawn"], size["repeated"], size["dropped"]) == (100, 100 - size["available"], 0)
    assert up["by_source"]["alpaca_zh"] == 100
