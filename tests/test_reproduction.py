"""The reproduction-study driver (benchmarks/reproduction): its units, its verdict rules, and a whole small study
run end to end on CPU with a tiny random model (prepare -> run, interrupted and resumed -> collect -> score ->
report)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from xllama.data.mix import MixSpec

STUDY_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduction"


def _module(name):
    sys.path.insert(0, str(STUDY_DIR))
    try:
        spec = importlib.util.spec_from_file_location(name, STUDY_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(STUDY_DIR))


driver = _module("run_study")
report = _module("report")


def test_the_study_defines_every_unit_the_issue_asks_for():
    study = driver.load_study(STUDY_DIR / "study.yaml")
    units = {u.name: u for u in driver.units(study)}
    assert {"base", "alpaca", "x-zh", "x-de", "m-zh-de-ru", "vi-no-pairs"} <= set(units)
    for lang in ("zh", "de", "ru"):
        assert len([n for n in units if n.startswith(f"scale-{lang}-")]) >= 5
    assert units["alloc-optimised"].mix is None  # waits for the fit
    assert units["base"].mix is None
    assert units["alpaca"].mix["mix"] == "alpaca"
    assert units["x-zh"].mix["mix"] == "x-llama" and units["x-zh"].mix["languages"] == ["zh"]
    assert units["m-zh-de-ru"].mix["mix"] == "custom"  # no Alpaca in Russian: named sources
    assert set(units["m-zh-de-ru"].mix["parallel"]) == {"en-zh", "en-de", "en-ru"}
    assert units["vi-no-pairs"].mix["parallel"] == {}
    assert units["scale-zh-500"].mix["parallel_sizes"] == {"zh": 500}
    assert "parallel_sizes" not in units["scale-zh-all"].mix
    for unit in units.values():  # every generated mix is a valid `xllama data build --spec`
        if unit.mix is not None:
            MixSpec.from_dict(unit.mix, where=unit.name)
    allocation = {"allocation": {"zh": 1000, "de": 3000, "ru": 2000},
                  "uniform": {"allocation": {"zh": 2000, "de": 2000, "ru": 2000}}}
    units = {u.name: u for u in driver.units(study, allocation)}
    assert units["alloc-optimised"].mix["parallel_sizes"] == {"zh": 1000, "de": 3000, "ru": 2000}
    assert units["alloc-uniform"].mix["parallel_sizes"] == {"zh": 2000, "de": 2000, "ru": 2000}


def test_a_bad_study_names_the_key(tmp_path):
    study = yaml.safe_load((STUDY_DIR / "study.yaml").read_text())
    study["models"]["x-fr"] = {"instructions": ["en", "fr"]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(driver.StudyError, match=r"models\.x-fr\.instructions.*'fr'"):
        driver.load_study(path)
    del study["models"]["x-fr"], study["scaling"]
    path.write_text(yaml.safe_dump(study))
    assert driver.main(["--study", str(path), "status"]) == 2


def test_verdict_rules():
    assert report.better(2.0, 1.0) and not report.better(1.0, 1.0) and report.better(None, 1.0) is None
    assert report.comparable(9.1, 10.0) and not report.comparable(8.9, 10.0)  # 10% of 10
    assert report.comparable(0.5, 1.4) and not report.comparable(0.3, 1.4)  # at least 1 point
    assert report.verdict([True, True]) == "reproduced"
    assert report.verdict([True, False]) == "partly reproduced"
    assert report.verdict([False, False]) == "not reproduced"
    assert report.verdict([None, None]) == "not measured"
    assert report.verdict([True, None]).startswith("incomplete")
    assert report.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert report.spearman([1, 2, 3], [5, 5, 5]) is None
    assert report.is_middle(15, 30) and not report.is_middle(2, 30) and not report.is_middle(29, 30)


def _tiny_model(folder: Path, shared: Path) -> Path:
    from xllama.modeling import build_bpe_tokenizer, build_model_from_config

    flores = shared / "data" / "eval" / "flores101" / "devtest"
    texts = [line for name in ("eng", "zho_simpl", "deu") for line in (flores / f"{name}.devtest").open()]
    tokenizer = build_bpe_tokenizer(texts, 1024)
    model = build_model_from_config(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
         "tie_word_embeddings": True}, vocab_size=len(tokenizer), seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SMOKE = {
    "name": "smoke", "model": "unused", "recipe": "benchmarks/reproduction/recipe.yaml",
    "train_overrides": ["train.max_steps=2", "train.device=cpu", "train.precision=fp32",
                        "train.global_batch_size=8", "train.micro_batch_tokens=1024", "train.save_every=0"],
    "pools": {"seed": 42, "instructions": {"alpaca-en-zh": 64, "alpaca-de": 64, "alpaca-vi": 64},
              "parallel": ["zh", "de"], "flores": ["en", "zh", "de"], "xquad": ["en", "zh"]},
    "guard": ["flores101", "xquad"],
    "instructions_per_language": 48,
    "models": {"base": {}, "x-zh": {"instructions": ["en", "zh"], "pairs": ["zh"]}},
    "evaluation": {"translation_languages": ["zh"], "translation_lines": 4, "translation_max_new_tokens": 8,
                   "qa_languages": ["en", "zh"], "qa_questions": 4, "qa_max_new_tokens": 8, "metrics": "bleu,chrf"},
    "alignment": {"models": ["base", "x-zh"], "pairs": ["en-zh"], "lines": 8},
    "scaling": {"languages": ["zh", "de"], "sizes": [16, 32, 64], "instructions_en": 16, "metric": "chrf",
                "eval_lines": 4, "budget": 60, "allocation_eval_lines": 4},
}


@pytest.mark.slow
def test_small_study_end_to_end_with_interruption(tmp_path, shared, capsys):
    model = _tiny_model(tmp_path / "tiny", shared)
    study = dict(SMOKE, shared=str(shared), model=str(model))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    work, results = tmp_path / "work", tmp_path / "study" / "results"
    cli = ["--study", str(tmp_path / "study.yaml"), "--work", str(work), "--results", str(results)]

    assert driver.main([*cli, "prepare"]) == 0
    assert (work / "carry" / "pool.tar.xz").is_file()
    pools = json.loads((work / "pool" / "pools.json").read_text())
    assert pools["files"]["instructions/alpaca-en-zh.json"]["records"] == 64

    # A budget that runs out part-way (on this machine, in the second unit): the phase in flight is stopped,
    # the unit is not marked done, and the next call resumes it.
    capsys.readouterr()
    assert driver.main([*cli, "run", "--model", str(model), "--budget-s", "25", "--quiet"]) == 0
    assert "stopped: " in capsys.readouterr().out
    assert not (work / "results" / "alloc-uniform" / "unit.json").exists()
    bundle = tmp_path / "out" / "results.tar.gz"
    assert driver.main([*cli, "run", "--model", str(model), "--budget-s", "900", "--quiet", "--bundle",
                        str(bundle)]) == 0
    done = {p.name for p in (work / "results").iterdir() if (p / "unit.json").is_file()}
    assert done == {"base", "x-zh", "alloc-optimised", "alloc-uniform",
                    *(f"scale-{lang}-{n}" for lang in ("zh", "de") for n in (16, 32, 64))}
    for name in done:
        record = json.loads((work / "results" / name / "unit.json").read_text())
        assert record["status"] == "ok", record.get("error")
    allocation = json.loads((work / "results" / "scaling" / "allocation.json").read_text())
    alloc_mix = yaml.safe_load((work / "results" / "alloc-optimised" / "mix.yaml").read_text())
    assert alloc_mix["parallel_sizes"] == allocation["allocation"]
    x_zh = json.loads((work / "results" / "x-zh" / "unit.json").read_text())
    assert [p["name"] for p in x_zh["phases"]] == ["mix", "train", "translation", "qa", "align"]
    assert x_zh["phases"][1]["command"].startswith("xllama train --recipe benchmarks/reproduction/recipe.yaml")

    capsys.readouterr()
    assert driver.main([*cli, "run", "--model", str(model), "--budget-s", "900"]) == 0  # all done: no work
    assert "..." not in capsys.readouterr().out

    assert driver.main([*cli, "collect", str(bundle)]) == 0
    assert driver.main([*cli, "score"]) == 0
    off = json.loads((results / "x-zh" / "off_target.json").read_text())
    assert set(off) == {"en-zh", "zh-en"} and 0 <= off["en-zh"]["off_target"] <= 100
    assert driver.main([*cli, "report"]) == 0
    text = (results.parent / "RESULTS.md").read_text()
    assert "## Claims and verdicts" in text and "| x-zh |" in text
    assert "xllama scaling allocate" in json.loads((results / "scaling" / "commands.json").read_text())[1]


window = _module("window")


def test_priority_one_units_and_the_token_budget(tmp_path):
    study = driver.load_study(STUDY_DIR / "study.yaml")
    units = {u.name: u for u in driver.units(study, only_langs=["en", "zh"])}
    assert units["base"].pairs == ["en-zh", "zh-en"] and units["base"].qa == ["en", "zh"]
    assert units["base"].token_budget is None  # untrained
    assert units["alpaca"].token_budget == units["x-zh"].token_budget == study["token_budget"]
    assert units["scale-de-500"].pairs == ["en-de"]  # the language filter is for the main models only
    full = {u.name: u for u in driver.units(study)}
    assert len(full["alpaca"].pairs) == 2 * len(study["evaluation"]["translation_languages"])
    bad = yaml.safe_load((STUDY_DIR / "study.yaml").read_text())
    bad["token_budget"] = "2M"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(driver.StudyError, match="token_budget"):
        driver.load_study(tmp_path / "study.yaml")


def test_a_later_run_adds_evaluations_to_a_finished_unit(tmp_path):
    """A unit evaluated on en/zh lacks de once the study asks for it; the second run's results merge in."""
    study = driver.load_study(STUDY_DIR / "study.yaml")
    driver.use_folders(tmp_path / "work", tmp_path / "results")
    base = {u.name: u for u in driver.units(study, only_langs=["en", "zh"])}["base"]
    old = tmp_path / "results" / "base"
    old.mkdir(parents=True)
    results = {"scores": {"en-zh": {"bleu": 1.0}, "zh-en": {"bleu": 2.0}}, "signatures": {},
               "extra": {"outputs": {"en-zh": "translation_x/en-zh.txt", "zh-en": "translation_x/zh-en.txt"}}}
    (old / "results_translation_x.json").write_text(json.dumps(results))
    (old / "results_qa_x.json").write_text(json.dumps({"scores": {"en": {}, "zh": {}}}))
    (old / "unit.json").write_text(json.dumps({"name": "base", "status": "ok", "phases": [{"name": "qa"}]}))
    assert not driver.is_complete(base) and driver.missing(base, old)["align"] == base.align
    (old / "align").mkdir()
    (old / "align" / "alignment.json").write_text("{}")
    assert driver.is_complete(base)
    full = {u.name: u for u in driver.units(study)}["base"]
    lacking = driver.missing(full, old)
    assert lacking["pairs"] == ["en-de", "de-en", "en-ru", "ru-en", "en-vi", "vi-en"] and "de" in lacking["qa"]
    assert [u.name for u in driver.pending(study, None, ["base"], False)] == ["base"]

    work = tmp_path / "work" / "work" / "base"
    (work / "eval" / "translation_x").mkdir(parents=True)
    (work / "eval" / "translation_x" / "en-de.txt").write_text("x\n")
    added = {"scores": {"en-de": {"bleu": 3.0}}, "signatures": {},
             "extra": {"outputs": {"en-de": "translation_x/en-de.txt"}}}
    (work / "eval" / "results_translation_x.json").write_text(json.dumps(added))
    driver.finish_unit(full, work, {"name": "base", "status": "ok", "phases": [{"name": "translation"}]}, old)
    merged = tmp_path / "work" / "results" / "base"
    scores = json.loads((merged / "results_translation_x.json").read_text())
    assert set(scores["scores"]) == {"en-zh", "zh-en", "en-de"} and len(scores["extra"]["outputs"]) == 3
    record = json.loads((merged / "unit.json").read_text())
    assert record["runs"] == 2 and [p["name"] for p in record["phases"]] == ["qa", "translation"]
    assert driver.missing(full, merged)["pairs"] == ["de-en", "en-ru", "ru-en", "en-vi", "vi-en"]


def test_window_plans_fit_the_device_limits():
    for number in (1, 2):
        calls = window.plan(number)
        assert window.check_plan(calls, sizes=False) == []
        assert calls[0]["carry"] == [".device-model/a", ".repro/carry", ".whl"]
        assert all(c["timeout_s"] <= 600 for c in calls)
    p1 = window.plan(1)[1]["command"]
    assert "--only base,alpaca,x-zh" in p1 and "--langs en,zh" in p1 and "--bench generation" in p1
    assert "--bench training" in window.plan(1)[2]["command"]


@pytest.mark.slow
def test_window_one_rehearsed_on_cpu(tmp_path, shared, monkeypatch, capsys):
    """Window 1 as the GPU machine runs it (window.py stage, then run with lanes and both benchmarks), with a tiny
    model and tiny sizes; then collect, score and report here."""
    model = _tiny_model(tmp_path / "tiny", shared)
    study = dict(SMOKE, shared=str(shared), model=str(model), token_budget=6000,
                 train_overrides=[o for o in SMOKE["train_overrides"] if not o.startswith("train.max_steps")],
                 models={"base": {}, "alpaca": {"instructions": ["en"]},
                         "x-zh": {"instructions": ["en", "zh"], "pairs": ["zh"]}},
                 evaluation=dict(SMOKE["evaluation"], translation_languages=["zh", "de"], qa_languages=["en", "zh"]),
                 alignment=dict(SMOKE["alignment"], models=[]))  # alignment: the test above
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    work, results = tmp_path / "work", tmp_path / "study" / "results"
    cli = ["--study", str(tmp_path / "study.yaml"), "--work", str(work), "--results", str(results)]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert driver.main([*cli, "prepare"]) == 0
    assert (work / "pool" / "tokenizer" / "tokenizer.json").is_file()

    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert window.main([*cli, "stage", "--out", str(out1)]) == 0
    assert json.loads((out1 / "window.json").read_text())["steps"][0]["step"] == "stage"
    assert window.main([*cli, "run", "--out", str(out2), "--model", str(model), "--only", "base,alpaca,x-zh",
                        "--langs", "en,zh", "--lanes", "3", "--budget-s", "1800", "--call-limit-s", "3000",
                        "--bench", "generation,training", "--gen-limit", "4", "--gen-max-new-tokens", "8",
                        "--train-bench-args", "--steps 1 --warmup-steps 1"]) == 0
    assert {"results.tar.gz", "bench.tar.gz", "logs.tar.gz", "window.json", "window.log"} <= {
        p.name for p in out2.iterdir()}
    steps = {s["step"]: s for s in json.loads((out2 / "window.json").read_text())["steps"]}
    assert steps["study"]["exit"] == 0 and steps["bench generation"]["exit"] == 0
    assert steps["bench training"]["exit"] == 0

    budgets = {}
    for name in ("alpaca", "x-zh"):
        record = json.loads((work / "results" / name / "unit.json").read_text())
        assert record["status"] == "ok", record.get("error")
        assert [p["name"] for p in record["phases"]][:3] == ["mix", "tokens", "train"]
        assert f"--set train.epochs={record['budget']['epochs']}" in record["phases"][2]["command"]
        trained = [json.loads(line) for line in (work / "results" / name / "train" / "metrics.jsonl").open()]
        budgets[name] = sum(r["tokens"] for r in trained)
    # the same token budget: within one optimiser step of it (a step is 8 examples here)
    assert all(abs(t - 6000) < 8 * 512 for t in budgets.values()), budgets

    assert window.main([*cli, "collect", str(out2), "--bench-results", str(tmp_path / "bench")]) == 0
    assert (tmp_path / "bench" / "generation" / "results" / "bench_cpu.json").is_file()
    assert (tmp_path / "bench" / "training" / "results" / "train_cpu.json").is_file()
    assert {p.name for p in results.iterdir()} == {"base", "alpaca", "x-zh"}
    capsys.readouterr()
    assert driver.main([*cli, "status"]) == 0
    assert "lacks en-de, de-en" in capsys.readouterr().out  # the other languages come in a later window
    assert driver.main([*cli, "score"]) == 0
    assert driver.main([*cli, "report"]) == 0
    text = (results.parent / "RESULTS.md").read_text()
    assert "| x-zh |" in text and "x-zh vs alpaca: en-zh BLEU" in text
