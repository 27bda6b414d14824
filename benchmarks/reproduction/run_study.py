#!/usr/bin/env python
"""The paper's study at small scale, run with xllama's own commands: one resumable driver (issue 8).

  python benchmarks/reproduction/run_study.py prepare     # here: compact data pools (+ wheels) to carry
  python benchmarks/reproduction/run_study.py run --budget-s 500 --bundle $OUT/results.tar.gz   # GPU machine
  python benchmarks/reproduction/run_study.py collect FILES_AT/results.tar.gz                  # here
  python benchmarks/reproduction/run_study.py score       # here: off-target rates of the returned outputs
  python benchmarks/reproduction/run_study.py report      # RESULTS.md and plots from results/
  python benchmarks/reproduction/run_study.py status      # done / failed / pending, with times

The study (study.yaml) is a list of *units*: build a mix, train, evaluate, align -- each phase one xllama command.
A unit's result folder (results/<unit>/unit.json last) marks it done, so `run` resumes where the last call or
session stopped; within a call, an interrupted phase resumes too (training from its checkpoint, evaluation from
its generation cache). `run` stops starting work when its time budget is spent, so it fits a device call.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if importlib.util.find_spec("xllama") is None:  # not installed (the GPU machine): use this checkout's
    sys.path.insert(0, str(REPO))

from xllama.data.sources import natural_key  # noqa: E402
from xllama.errors import XllamaError  # noqa: E402
from xllama.io import atomic_directory, atomic_write_json, iter_jsonl, read_json  # noqa: E402
from xllama.languages import get_language  # noqa: E402

sys.path.insert(0, str(HERE))
from report import pair_sizes, write_report  # noqa: E402  (benchmarks/reproduction/report.py)
WORK = REPO / ".repro"  # ignored by git: pools, base model, run folders, results made on this machine
POOL = WORK / "pool"
CARRY = WORK / "carry"
RESULTS = HERE / "results"  # committed results (collected from the GPU machine)
NEW_RESULTS = WORK / "results"  # results made on this machine, bundled for collection


def use_folders(work: Path, results: Path) -> None:
    """Point the driver at other folders (tests, a second study) instead of .repro/ and results/."""
    global WORK, POOL, CARRY, RESULTS, NEW_RESULTS
    WORK, RESULTS = work.resolve(), results.resolve()
    POOL, CARRY, NEW_RESULTS = WORK / "pool", WORK / "carry", WORK / "results"

# Where each pool comes from in the shared folder, and its file in the pool.
INSTRUCTION_SOURCES = {
    "alpaca-en-zh": ("data/instructions/alpaca-en-zh", "instructions/alpaca-en-zh.json"),
    "alpaca-de": ("data/instructions/alpaca-de/translated_tasks_de_openai_12k.json", "instructions/alpaca-de.json"),
    "alpaca-vi": ("data/instructions/alpaca-vi", "instructions/alpaca-vi.jsonl"),
}
INSTRUCTION_POOL = {"en": "alpaca-en-zh", "zh": "alpaca-en-zh", "de": "alpaca-de", "vi": "alpaca-vi"}
MIN_PHASE_S = 20  # a phase is not started with less time left than this
STOP_GRACE_S = 45  # after SIGTERM at the deadline: time to finish the step and checkpoint
WHEELS = ["datasets==5.0.1", "dill==0.4.1", "multiprocess==0.70.19", "gguf==0.19.0"]  # missing on the GPU machine


class StudyError(Exception):
    """A problem with the study file, the pools or a results folder: printed as one line, exit status 2."""


class BudgetSpent(Exception):
    """The time budget ran out in the middle of a phase (it was stopped cleanly and resumes next time)."""


# --- the study -----------------------------------------------------------------------------------------------

def load_study(path: Path) -> dict:
    try:
        study = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise StudyError(f"{path}: cannot read the study: {e}") from None
    for key in ("model", "shared", "recipe", "pools", "guard", "models", "evaluation", "alignment", "scaling",
                "instructions_per_language"):
        if key not in (study or {}):
            raise StudyError(f"{path}: missing key {key!r}")
    for name, spec in study["models"].items():
        unknown = set(spec or {}) - {"instructions", "pairs"}
        if unknown:
            raise StudyError(f"{path}: models.{name}: unknown key(s) {sorted(unknown)}; expected instructions, pairs")
        for lang in (spec or {}).get("instructions", []):
            if lang not in INSTRUCTION_POOL:
                raise StudyError(f"{path}: models.{name}.instructions: no Alpaca pool for {lang!r} "
                                 f"(have {', '.join(INSTRUCTION_POOL)})")
        for lang in (spec or {}).get("pairs", []):
            if lang not in study["pools"]["parallel"]:
                raise StudyError(f"{path}: models.{name}.pairs: {lang!r} is not in pools.parallel")
    for size in study["scaling"]["sizes"]:
        if size != "all" and (not isinstance(size, int) or size < 1):
            raise StudyError(f"{path}: scaling.sizes: expected positive integers or 'all', got {size!r}")
    budget = study.get("token_budget")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise StudyError(f"{path}: token_budget: expected a positive number of tokens, got {budget!r}")
    return study


@dataclass
class Unit:
    """One row of the study: an optional mix + training run, then evaluation (and alignment)."""

    name: str
    kind: str  # main | scaling | allocation
    mix: dict | None  # a MixSpec dict for `xllama data build --spec` (None: the base model, untrained)
    pairs: list[str]  # translation directions to evaluate
    lines: int
    qa: list[str] = field(default_factory=list)
    questions: int = 0
    align: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    token_budget: int | None = None  # train on this many tokens (epochs = budget / the mix's tokens per epoch)


def _rel(path: Path) -> str:
    return os.path.relpath(path, REPO)


def _mix(instructions: list[str], pairs: list[str], study: dict, sizes: dict | None = None,
         parallel_sizes: dict | None = None, named: bool = True) -> dict:
    """A MixSpec dict over the pools; the named mix (alpaca / x-llama / m-llama) wherever one describes it,
    unless ``named`` is False (English Alpaca + pairs only: the scaling and allocation runs)."""
    langs = [lang for lang in instructions if lang != "en"]
    if not named:
        kind = "custom"
    elif pairs and sorted(langs) == sorted(pairs) and "en" in instructions:
        kind = "x-llama" if len(pairs) == 1 else "m-llama"
    elif instructions == ["en"] and not pairs:
        kind = "alpaca"
    else:
        kind = "custom"
    spec = {
        "mix": kind,
        "instructions": {lang: _rel(POOL / INSTRUCTION_SOURCES[INSTRUCTION_POOL[lang]][1]) for lang in instructions},
        "parallel": {f"en-{lang}": _rel(POOL / "parallel" / f"{lang}en") for lang in pairs},
        "guard": [_rel(POOL / name) for name in study["guard"]],
        "directions": "en-x",
        "seed": study["pools"]["seed"],
    }
    if kind in ("x-llama", "m-llama"):
        spec["languages"] = list(pairs)
    if sizes:
        spec["sizes"] = sizes
    if parallel_sizes:
        spec["parallel_sizes"] = parallel_sizes
    return spec


def units(study: dict, allocation: dict | None = None, only_langs: list[str] | None = None) -> list[Unit]:
    """Every unit in run order: main models, scaling points, then the two allocations (once the fit exists).
    ``only_langs`` limits the main models' evaluation to these languages for now (a later run adds the rest)."""
    ev, sc, al = study["evaluation"], study["scaling"], study["alignment"]
    per_lang = study["instructions_per_language"]
    out = []
    for name, spec in study["models"].items():
        spec = spec or {}
        instructions, langs = spec.get("instructions", []), spec.get("pairs", [])
        translation = [x for x in ev["translation_languages"] if not only_langs or x in only_langs]
        qa = [x for x in ev["qa_languages"] if not only_langs or x in only_langs]
        pairs = [p for lang in translation for p in (f"en-{lang}", f"{lang}-en")]
        mix = None
        if instructions or langs:
            mix = _mix(instructions, langs, study, sizes={f"alpaca_{lang}": per_lang for lang in instructions})
        out.append(Unit(name, "main", mix, pairs, ev["translation_lines"], qa, ev["qa_questions"],
                        list(al["pairs"]) if name in al["models"] else [], {"instructions": instructions,
                                                                             "pairs": langs},
                        study.get("token_budget") if mix is not None else None))
    for lang in sc["languages"]:
        for size in sc["sizes"]:
            mix = _mix(["en"], [lang], study, sizes={"alpaca_en": sc["instructions_en"]},
                       parallel_sizes=None if size == "all" else {lang: size}, named=False)
            out.append(Unit(f"scale-{lang}-{size}", "scaling", mix, [f"en-{lang}"], sc["eval_lines"],
                            info={"lang": lang, "size": size}))
    for which in ("optimised", "uniform"):
        split = None
        if allocation is not None:
            split = allocation["allocation"] if which == "optimised" else allocation["uniform"]["allocation"]
        mix = None
        if split is not None:
            mix = _mix(["en"], list(sc["languages"]), study, sizes={"alpaca_en": sc["instructions_en"]},
                       parallel_sizes={lang: int(n) for lang, n in split.items()}, named=False)
        out.append(Unit(f"alloc-{which}", "allocation", mix, [f"en-{lang}" for lang in sc["languages"]],
                        sc["allocation_eval_lines"], info={"split": split, "budget": sc["budget"]}))
    return out


# --- results folders -----------------------------------------------------------------------------------------

def result_dir(name: str) -> Path | None:
    """The folder holding a finished unit (this machine's results first), or None."""
    for root in (NEW_RESULTS, RESULTS):
        if (root / name / "unit.json").is_file():
            return root / name
    return None


def unit_record(name: str) -> dict | None:
    folder = result_dir(name)
    return json.loads((folder / "unit.json").read_text(encoding="utf-8")) if folder else None


def scaling_dir() -> Path | None:
    for root in (NEW_RESULTS, RESULTS):
        if (root / "scaling" / "allocation.json").is_file():
            return root / "scaling"
    return None


# --- prepare (here, CPU) -------------------------------------------------------------------------------------

def _records(path: Path) -> list:
    """Records of a JSON array or JSONL file, or of every such file in a folder (natural order)."""
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix in (".json", ".jsonl")), key=natural_key)
        return [r for f in files for r in _records(f)]
    return [r for _, r in iter_jsonl(path)] if path.suffix == ".jsonl" else read_json(path)


def prepare(study: dict, wheels: bool) -> None:
    """Seeded pools of the shared data -> .repro/pool, packed as .repro/carry/pool.tar.xz for the GPU machine."""
    import hashlib

    shared = (REPO / study["shared"]).resolve()
    pools = study["pools"]
    if not shared.is_dir():
        raise StudyError(f"shared data folder {shared} not found (study key 'shared')")
    model = (REPO / study["model"]).resolve()
    if not model.exists():
        raise StudyError(f"base model {model} not found (study key 'model')")

    def build(tmp: Path) -> None:
        made = {"seed": pools["seed"], "shared": str(shared), "files": {}}
        for name, count in pools["instructions"].items():
            source, target = INSTRUCTION_SOURCES[name]
            records = _records(shared / source)
            keep = sorted(random.Random(f"{pools['seed']}:{name}").sample(range(len(records)), min(count, len(records))))
            out = tmp / target
            out.parent.mkdir(parents=True, exist_ok=True)
            rows = [records[i] for i in keep]
            if out.suffix == ".jsonl":
                out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            else:
                out.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
            made["files"][target] = {"from": source, "records": len(rows), "of": len(records)}
        for lang in pools["parallel"]:
            src = shared / "data/parallel/alma-human-written" / f"{lang}en"
            (tmp / "parallel" / f"{lang}en").mkdir(parents=True)
            for side in (lang, "en"):
                name = f"train.{lang}-en.{side}"
                shutil.copy(src / name, tmp / "parallel" / f"{lang}en" / name)
                made["files"][f"parallel/{lang}en/{name}"] = {"from": str((src / name).relative_to(shared))}
        (tmp / "flores101").mkdir()
        for lang in pools["flores"]:
            name = f"{get_language(lang).flores101}.devtest"
            shutil.copy(shared / "data/eval/flores101/devtest" / name, tmp / "flores101" / name)
            made["files"][f"flores101/{name}"] = {"from": f"data/eval/flores101/devtest/{name}"}
        (tmp / "xquad").mkdir()
        for lang in pools["xquad"]:
            shutil.copy(shared / "data/eval/xquad" / f"xquad.{lang}.json", tmp / "xquad" / f"xquad.{lang}.json")
            made["files"][f"xquad/xquad.{lang}.json"] = {"from": f"data/eval/xquad/xquad.{lang}.json"}
        for rel, info in made["files"].items():
            info["sha256"] = hashlib.sha256((tmp / rel).read_bytes()).hexdigest()
        # The base model's tokenizer (1 MiB packed): the training benchmark runs on it before the model arrives.
        from xllama.modeling import load_tokenizer

        load_tokenizer(str(model)).save_pretrained(tmp / "tokenizer", legacy_format=False)  # tokenizer.json only
        made["tokenizer"] = {"from": study["model"]}
        (tmp / "pools.json").write_text(json.dumps(made, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    with atomic_directory(POOL, overwrite=True) as tmp:
        build(tmp)
    CARRY.mkdir(parents=True, exist_ok=True)
    tmp = CARRY / "pool.tar.xz.tmp"
    with tarfile.open(tmp, "w:xz") as tar:
        tar.add(POOL, arcname="pool")
    os.replace(tmp, CARRY / "pool.tar.xz")
    print(f"pools: {_rel(POOL)} ({_size(POOL)}), packed: {_rel(CARRY / 'pool.tar.xz')} "
          f"({_size(CARRY / 'pool.tar.xz')})")
    if wheels:
        whl = REPO / ".whl"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(whl), *WHEELS], check=True)
        print(f"wheels: {_rel(whl)} ({_size(whl)}): {', '.join(WHEELS)}")


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 2**20:.1f} MiB"


# --- run (the GPU machine) -----------------------------------------------------------------------------------

class Runner:
    """Runs units phase by phase as xllama commands, each in its own process, within a time budget."""

    def __init__(self, study: dict, model: str, budget_s: float, quiet: bool = False):
        self.study, self.model = study, model
        self.deadline = time.monotonic() + budget_s
        self.quiet = quiet
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false")

    # Each phase: (name, command, done?, uses the GPU?); a generator, so that a phase's command can depend on
    # what the phases before it wrote (the token budget's epochs).
    def phases(self, unit: Unit, work: Path, base: str):
        study = self.study
        model = base if unit.mix is None else _rel(work / "run" / "final")
        if unit.mix is not None:
            yield ("mix", ["data", "build", "--spec", _rel(work / "mix.yaml"), "--out", _rel(work / "mix"),
                           "--quiet"], (work / "mix" / "manifest.json").is_file(), False)
            train = ["train", "--recipe", study["recipe"], "--model", base, "--data", _rel(work / "mix")]
            for override in study.get("train_overrides") or []:
                train += ["--set", override]
            if unit.token_budget:  # tokenise once (`--dry-run`), then train for budget / tokens-per-epoch epochs
                yield ("tokens", [*train, "--out", _rel(work / "dry"), "--dry-run"],
                       (work / "budget.json").is_file(), False)
                train += ["--set", f"train.epochs={token_budget(unit, work)['epochs']}"]
            train += ["--out", _rel(work / "run")]
            if (work / "run" / "config.yaml").is_file():
                train.append("--resume")
            yield ("train", train, (work / "run" / "final" / "config.json").is_file(), True)
        ev = study["evaluation"]
        phases = []
        flores = _rel(POOL / "flores101")
        phases.append(("translation", [
            "eval", "translation", "--model", model, "--data", flores, "--pairs", ",".join(unit.pairs),
            "--limit", str(unit.lines), "--max-new-tokens", str(ev["translation_max_new_tokens"]),
            "--metrics", ev["metrics"], "--out", _rel(work / "eval"), "--no-progress"],
            _scored(work / "eval", "translation", unit.pairs), True))
        if unit.qa:
            phases.append(("qa", [
                "eval", "qa", "--model", model, "--data", _rel(POOL / "xquad"), "--lang", ",".join(unit.qa),
                "--limit", str(unit.questions), "--max-new-tokens", str(ev["qa_max_new_tokens"]),
                "--out", _rel(work / "eval"), "--no-progress"], _scored(work / "eval", "qa", unit.qa), True))
        if unit.align:
            phases.append(("align", [
                "align", "--model", model, "--label", unit.name, "--pairs", ",".join(unit.align),
                "--data", flores, "--limit", str(study["alignment"]["lines"]), "--out", _rel(work / "align")],
                (work / "align" / "alignment.json").is_file(), True))
        yield from phases

    def call(self, argv: list[str], log: Path) -> tuple[int, float]:
        """One xllama command in its own process group; at the deadline it gets SIGTERM (training checkpoints)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.deadline - time.monotonic() < MIN_PHASE_S:
            raise BudgetSpent(f"less than {MIN_PHASE_S} s left before `xllama {argv[0]} {argv[1]}`")
        began = time.monotonic()
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ xllama {shlex.join(argv)}\n")
            f.flush()
            proc = subprocess.Popen([sys.executable, "-m", "xllama", *argv], cwd=REPO, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                raise BudgetSpent(f"time budget spent during `xllama {argv[0]} {argv[1]}`") from None
        return rc, time.monotonic() - began

    def run_unit(self, unit: Unit, base: str, previous: Path | None = None) -> dict:
        """Run the unit's phases; with ``previous`` (its result folder, lacking some evaluations the study now
        asks for), only what is missing, and the results are merged into that folder."""
        if previous is not None:
            lacking = missing(unit, previous)
            unit = Unit(**{**unit.__dict__, "pairs": lacking["pairs"], "qa": lacking["qa"], "align": lacking["align"]})
        work = WORK / "work" / unit.name
        work.mkdir(parents=True, exist_ok=True)
        if unit.mix is not None:
            (work / "mix.yaml").write_text(yaml.safe_dump(unit.mix, sort_keys=False, allow_unicode=True),
                                           encoding="utf-8")
        timing_file = work / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        record = {"name": unit.name, "kind": unit.kind, "info": unit.info, "status": "ok", "phases": []}
        if unit.token_budget:
            record["info"] = {**unit.info, "token_budget": unit.token_budget}
        for name, argv, done, gpu in self.phases(unit, work, base):
            if not done:
                self.say(f"  {unit.name}: {name} ...")
                rc, wall = self.call(argv, work / "logs" / f"{name}.log")
                timing[name] = timing.get(name, 0.0) + wall
                timing_file.write_text(json.dumps(timing))
                if rc != 0:
                    tail = (work / "logs" / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]
                    record.update(status="failed", failed_phase=name, error=tail)
                    self.say(f"  {unit.name}: {name} FAILED (exit {rc}); log tail:\n{tail[-1500:]}")
                    record["phases"].append({"name": name, "command": _command(argv), "wall_s": round(wall, 1),
                                             "gpu": gpu, "exit": rc})
                    break
                self.say(f"  {unit.name}: {name} done in {wall:.0f} s")
            record["phases"].append({"name": name, "command": _command(argv),
                                     "wall_s": round(timing.get(name, 0.0), 1), "gpu": gpu})
        if (work / "budget.json").is_file():
            record["budget"] = json.loads((work / "budget.json").read_text(encoding="utf-8"))
        record["environment"] = environment()
        finish_unit(unit, work, record, previous)
        return record

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def token_budget(unit: Unit, work: Path) -> dict:
    """Epochs that give ``unit.token_budget`` training tokens on this unit's mix, from its `--dry-run`
    tokenisation (work/dry); the tokenised data then moves into the run folder, so training does not redo it."""
    path = work / "budget.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from xllama.train.store import open_store

    store = open_store(work / "dry" / "store")
    tokens = int(store.lengths.sum())
    budget = {"token_budget": unit.token_budget, "examples": len(store), "tokens_per_epoch": tokens,
              "target_tokens_per_epoch": int((store.lengths - store.prompt_lengths).sum()),
              "epochs": round(unit.token_budget / tokens, 4)}
    del store
    if not (work / "run" / "config.yaml").is_file():
        (work / "run").mkdir(parents=True, exist_ok=True)
        for name in ("data", "tokenizer", "store"):  # xllama's run-folder layout (prepare_data skips
            # what exists: the training run starts from this tokenisation instead of redoing it)
            if (work / "dry" / name).is_dir() and not (work / "run" / name).exists():
                shutil.move(str(work / "dry" / name), work / "run" / name)
    atomic_write_json(path, budget)
    return budget


def _command(argv: list[str]) -> str:
    return "xllama " + shlex.join(argv).replace(" --resume", "")


def _scored(folder: Path, task: str, groups: list[str]) -> bool:
    for path in folder.glob(f"results_{task}_*.json"):
        scores = json.loads(path.read_text(encoding="utf-8")).get("scores", {})
        if all(g in scores for g in groups):
            return True
    return False


def environment() -> dict:
    import platform

    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"}
    return info


def missing(unit: Unit, folder: Path) -> dict:
    """What a finished unit's result folder lacks of what the study asks of it (added by a later run)."""
    scored = translation_scores(folder)
    qa = {}
    for path in folder.glob("results_qa_*.json"):
        qa.update(json.loads(path.read_text(encoding="utf-8"))["scores"])
    return {"pairs": [p for p in unit.pairs if p not in scored], "qa": [lang for lang in unit.qa if lang not in qa],
            "align": [] if (folder / "align" / "alignment.json").is_file() else unit.align}


def is_complete(unit: Unit) -> bool:
    record, folder = unit_record(unit.name), result_dir(unit.name)
    return record is not None and record["status"] == "ok" and not any(missing(unit, folder).values())


def _merge_results(old: Path, new: Path) -> dict:
    """One evaluation results file from two runs of the same evaluation over different groups (new wins)."""
    merged, added = json.loads(old.read_text(encoding="utf-8")), json.loads(new.read_text(encoding="utf-8"))
    for key in ("scores", "signatures"):
        merged[key] = {**merged.get(key, {}), **added.get(key, {})}
    merged.setdefault("extra", {})["outputs"] = {**merged["extra"].get("outputs", {}),
                                                 **added.get("extra", {}).get("outputs", {})}
    return merged


def finish_unit(unit: Unit, work: Path, record: dict, previous: Path | None = None) -> None:
    """Copy what the unit produced (small files only) into .repro/results/<unit>, unit.json last; with
    ``previous`` (the unit's earlier result folder), on top of a copy of it."""

    def build(tmp: Path) -> None:
        if previous is not None:
            shutil.copytree(previous, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unit.json"))
            earlier = json.loads((previous / "unit.json").read_text(encoding="utf-8"))
            record["phases"] = earlier["phases"] + record["phases"]
            record["runs"] = earlier.get("runs", 1) + 1
        copies = [("mix.yaml", "mix.yaml"), ("mix/manifest.json", "manifest.json"),
                  ("run/config.yaml", "train/config.yaml"), ("run/summary.json", "train/summary.json"),
                  ("run/metrics.jsonl", "train/metrics.jsonl"), ("run/store/stats.json", "train/tokenized.json"),
                  ("align/alignment.json", "align/alignment.json"), ("align/alignment.png", "align/alignment.png")]
        for src, dst in copies:
            if (work / src).is_file():
                (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / src, tmp / dst)
        if (work / "eval").is_dir():
            for path in (work / "eval").iterdir():
                if path.name.startswith("results_"):
                    if (tmp / path.name).is_file():
                        atomic_write_json(tmp / path.name, _merge_results(tmp / path.name, path))
                    else:
                        shutil.copy(path, tmp / path.name)
                elif path.is_dir() and path.name != "cache":
                    shutil.copytree(path, tmp / path.name, dirs_exist_ok=True)
        (tmp / "unit.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    with atomic_directory(NEW_RESULTS / unit.name, overwrite=True) as tmp:
        build(tmp)


def base_checkpoint(model: str) -> str:
    """A GGUF file is de-quantised once into an HF folder (.repro/models/base) that every run then loads."""
    if not model.endswith(".gguf"):
        return model
    target = WORK / "models" / "base"
    if not (target / "config.json").is_file():
        from xllama.modeling import load_model, load_tokenizer

        model_obj, tokenizer = load_model(model, dtype="float32"), load_tokenizer(model)

        def build(tmp: Path) -> None:
            model_obj.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "source.json").write_text(json.dumps({"gguf": str(Path(model).resolve())}))

        with atomic_directory(target, overwrite=True) as tmp:
            build(tmp)
    return _rel(target)


def scaling_points(study: dict) -> list[dict] | None:
    """One point per finished scaling unit: pairs actually used (after cleaning) and the en->X scores."""
    sc = study["scaling"]
    points = []
    for lang in sc["languages"]:
        for size in sc["sizes"]:
            record, folder = unit_record(f"scale-{lang}-{size}"), result_dir(f"scale-{lang}-{size}")
            if record is None or record["status"] != "ok":
                return None
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            sizes = pair_sizes(manifest, lang)
            scores = translation_scores(folder)[f"en-{lang}"]
            points.append({"lang": lang, "size": sizes["used"], "requested": size, "score": scores[sc["metric"]],
                           "bleu": scores["bleu"], "chrf": scores["chrf"],
                           "available": sizes["available"]})
    return points


def translation_scores(folder: Path) -> dict:
    scores = {}
    for path in sorted(folder.glob("results_translation_*.json")):
        scores.update(json.loads(path.read_text(encoding="utf-8"))["scores"])
    return scores


def fit_and_allocate(study: dict) -> dict | None:
    """When every scaling point exists: `xllama scaling fit` and `xllama scaling allocate` (CPU, seconds)."""
    from xllama.cli import main as xllama

    done = scaling_dir()
    if done is not None:
        return json.loads((done / "allocation.json").read_text(encoding="utf-8"))
    points = scaling_points(study)
    if points is None:
        return None
    sc = study["scaling"]
    caps = {p["lang"]: p["available"] for p in points}

    folder = NEW_RESULTS / "scaling"  # allocation.json, written last by `xllama scaling allocate`, marks it done
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "points.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["lang", "size", "score", "requested", "bleu", "chrf", "available"])
        writer.writeheader()
        writer.writerows(points)
    fit = ["scaling", "fit", _rel(folder / "points.csv"), "--out", _rel(folder / "fit.json"), "--plot",
           _rel(folder / "fit.png"), "--seed", "0"]
    allocate = ["scaling", "allocate", _rel(folder / "fit.json"), "--budget", str(sc["budget"]),
                *[a for lang, n in caps.items() for a in ("--cap", f"{lang}={n}")], "--out",
                _rel(folder / "allocation.json.tmp")]
    commands = [_command(a).replace(_rel(folder), _rel(RESULTS / "scaling")).replace(".json.tmp", ".json")
                for a in (fit, allocate)]
    (folder / "commands.json").write_text(json.dumps(commands, indent=2) + "\n", encoding="utf-8")
    for argv in (fit, allocate):
        with open(folder / "log.txt", "a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
            log.write(f"$ xllama {shlex.join(argv)}\n")
            code = xllama(argv)
        if code != 0:
            raise StudyError(f"`xllama {shlex.join(argv)}` failed (see {_rel(folder / 'log.txt')})")
    os.replace(folder / "allocation.json.tmp", folder / "allocation.json")
    return json.loads((NEW_RESULTS / "scaling" / "allocation.json").read_text(encoding="utf-8"))


def unpack_pools() -> None:
    if not POOL.is_dir():
        packed = CARRY / "pool.tar.xz"
        if not packed.is_file():
            raise StudyError(f"no data pools: run `prepare` first (expected {_rel(POOL)} or {_rel(packed)})")
        with tarfile.open(packed) as tar:
            tar.extractall(WORK, filter="data")


def pending(study: dict, allocation: dict | None, only: list[str] | None, retry_failed: bool,
            langs: list[str] | None = None) -> list[Unit]:
    """Units to run now: those not run yet (or failed, with ``retry_failed``) in study order, then finished ones
    lacking evaluations the study now asks for (an earlier run was limited to some languages)."""
    todo, partial = [], []
    for unit in units(study, allocation, langs):
        if only and unit.name not in only:
            continue
        record = unit_record(unit.name)
        if record is not None and record["status"] != "ok" and not retry_failed:
            continue
        if record is not None and record["status"] == "ok" and is_complete(unit):
            continue
        if unit.kind == "allocation" and unit.mix is None:
            continue  # waits for every scaling point
        (partial if record is not None and record["status"] == "ok" else todo).append(unit)
    return todo + partial


def run(study: dict, model: str, budget_s: float, only: list[str] | None, retry_failed: bool,
        bundle: str | None, quiet: bool = False, lanes: int = 1, cli: list[str] | None = None,
        langs: list[str] | None = None) -> int:
    began = time.monotonic()
    unpack_pools()
    if lanes > 1:
        return run_lanes(study, model, budget_s, only, retry_failed, bundle, lanes, cli or [], langs)
    runner = Runner(study, model, budget_s, quiet)
    base = None
    status = "completed"
    try:
        for pass_ in range(2):  # the second pass picks up the allocation units once the scaling fit exists
            allocation = fit_and_allocate(study)
            for unit in pending(study, allocation, only, retry_failed, langs):
                record, previous = unit_record(unit.name), None
                if record is not None and record["status"] != "ok":  # a failed unit being retried
                    shutil.rmtree(result_dir(unit.name))
                elif record is not None:  # finished, but the study now asks for more evaluations
                    previous = result_dir(unit.name)
                base = base or base_checkpoint(model)
                runner.say(f"{unit.name} ({unit.kind})")
                runner.run_unit(unit, base, previous)
            if pass_ == 0 and allocation is not None:
                break
    except BudgetSpent as e:
        status = f"stopped: {e}; run again to continue"
    finally:
        if bundle:
            write_bundle(Path(bundle))
    print(f"{status} after {time.monotonic() - began:.0f} s", flush=True)
    print_status(study)
    return 0


def run_lanes(study: dict, model: str, budget_s: float, only: list[str] | None, retry_failed: bool,
              bundle: str | None, lanes: int, cli: list[str], langs: list[str] | None = None) -> int:
    """Pending units side by side in ``lanes`` processes sharing the one GPU (a 135M model leaves most of it
    idle: the kernels are small and launch-bound). Each lane is this script's `run --only UNIT`, logged to
    .repro/lanes/UNIT.log; the bundle is rewritten after every unit, so a call cut short keeps what finished."""
    import threading

    began = time.monotonic()
    deadline = began + budget_s
    base = base_checkpoint(model)  # de-quantised once, before the lanes start
    lock = threading.Lock()
    (WORK / "lanes").mkdir(parents=True, exist_ok=True)

    def lane(queue: list[Unit]) -> None:
        while True:
            with lock:
                if not queue:
                    return
                unit = queue.pop(0)
            left = deadline - time.monotonic()
            if left < MIN_PHASE_S:
                print(f"  {unit.name}: not started ({left:.0f} s left)", flush=True)
                continue
            print(f"  {unit.name}: started ({left:.0f} s left)", flush=True)
            tick = time.monotonic()
            argv = [sys.executable, str(Path(__file__).resolve()), *cli, "run", "--model", base, "--only", unit.name,
                    "--budget-s", f"{left:.0f}", *(["--retry-failed"] if retry_failed else []),
                    *(["--langs", ",".join(langs)] if langs else [])]
            with open(WORK / "lanes" / f"{unit.name}.log", "a", encoding="utf-8") as log:
                rc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            record = unit_record(unit.name)
            state = "not finished" if record is None else record["status"]
            print(f"  {unit.name}: {state} after {time.monotonic() - tick:.0f} s (exit {rc}; log "
                  f"{_rel(WORK / 'lanes' / (unit.name + '.log'))})", flush=True)
            if bundle:
                with lock:
                    write_bundle(Path(bundle))

    for pass_ in range(2):  # the second pass picks up the allocation units once the scaling fit exists
        allocation = fit_and_allocate(study)
        queue = pending(study, allocation, only, retry_failed, langs)
        threads = [threading.Thread(target=lane, args=(queue,)) for _ in range(min(lanes, len(queue)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if pass_ == 0 and (allocation is not None or fit_and_allocate(study) is None):
            break  # a second pass only for the allocation units, once this pass completed the scaling points
    if bundle:
        write_bundle(Path(bundle))
    left = [u.name for u in pending(study, fit_and_allocate(study), only, retry_failed, langs)]
    status = f"stopped with {', '.join(left)} not finished; run again to continue" if left else "completed"
    print(f"{status} after {time.monotonic() - began:.0f} s", flush=True)
    print_status(study)
    return 0


def write_bundle(path: Path) -> None:
    """Every result made on this machine, as one file to bring back (collect)."""
    if not NEW_RESULTS.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for entry in sorted(NEW_RESULTS.iterdir()):
            if not entry.name.startswith("."):  # skip atomic_directory's work in progress
                tar.add(entry, arcname=entry.name)
    os.replace(tmp, path)


# --- collect, score, status (here) ---------------------------------------------------------------------------

def collect(bundles: list[str], force: bool) -> None:
    for name in bundles:
        path = Path(name)
        if path.is_dir():
            path = path / "results.tar.gz"
        if not path.is_file():
            raise StudyError(f"no results bundle at {path}")
        staging = WORK / "collect.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(path) as tar:
            tar.extractall(staging, filter="data")
        RESULTS.mkdir(parents=True, exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = RESULTS / entry.name
            if (target / "unit.json").is_file() and (entry / "unit.json").is_file():
                runs = [json.loads((d / "unit.json").read_text(encoding="utf-8")).get("runs", 1)
                        for d in (target, entry)]
                force_this = runs[1] > runs[0]  # evaluations added on top of the collected unit
            else:
                force_this = False
            if target.exists() and not (force or force_this):
                print(f"kept {_rel(target)} (already collected; --force replaces it)")
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(entry), target)
            print(f"collected {_rel(target)}")
        shutil.rmtree(staging, ignore_errors=True)


def score(study: dict) -> None:
    """Off-target rate of every returned translation output: `xllama eval score --metrics off_target`."""
    from xllama.cli import main as xllama

    if not RESULTS.is_dir():
        raise StudyError(f"no results in {_rel(RESULTS)}: collect a bundle first")
    for folder in sorted(p for p in RESULTS.iterdir() if (p / "unit.json").is_file()):
        target = folder / "off_target.json"
        done = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
        for results_file in sorted(folder.glob("results_translation_*.json")):
            results = json.loads(results_file.read_text(encoding="utf-8"))
            for pair, output in results["extra"]["outputs"].items():
                if pair in done:
                    continue
                tgt = pair.split("-")[1]
                code = get_language(tgt).flores101
                hyp = folder / output
                n = len(hyp.read_text(encoding="utf-8").splitlines())
                ref = WORK / "refs" / f"{tgt}.{n}.txt"
                if not ref.is_file():
                    flores = (REPO / study["shared"]) / "data/eval/flores101/devtest" / f"{code}.devtest"
                    ref.parent.mkdir(parents=True, exist_ok=True)
                    ref.write_text("".join(flores.read_text(encoding="utf-8").splitlines(True)[:n]), encoding="utf-8")
                out = WORK / "refs" / "score.json"
                argv = ["eval", "score", "--hyp", str(hyp), "--ref", str(ref), "--tgt", tgt, "--metrics",
                        "off_target", "--out", str(out)]
                with contextlib.redirect_stdout(None):
                    code = xllama(argv)
                if code != 0:
                    raise StudyError(f"`xllama {shlex.join(argv)}` failed")
                scored = json.loads(out.read_text(encoding="utf-8"))
                done[pair] = {"off_target": scored["off_target"], "n": scored["n"],
                              "command": f"xllama eval score --hyp {_rel(hyp)} --ref <first {n} lines of FLORES-101 "
                                         f"{code}.devtest> --tgt {tgt} --metrics off_target"}
                atomic_write_json(target, done)
        print(f"{folder.name}: off-target scored for {len(done)} directions")


def print_status(study: dict) -> None:
    allocation = None
    folder = scaling_dir()
    if folder is not None:
        allocation = json.loads((folder / "allocation.json").read_text(encoding="utf-8"))
    rows = []
    for unit in units(study, allocation):
        record = unit_record(unit.name)
        if record is None:
            state = "waiting for the scaling fit" if unit.kind == "allocation" and unit.mix is None else "pending"
            rows.append(f"  {unit.name:<22} {state}")
            continue
        wall = sum(p["wall_s"] for p in record["phases"])
        lacking = missing(unit, result_dir(unit.name)) if record["status"] == "ok" else {}
        lacking = ", ".join(x for v in lacking.values() for x in v)
        rows.append(f"  {unit.name:<22} {record['status']:<7} {wall:7.0f} s  {result_dir(unit.name).parent.name}/"
                    + (f"  lacks {lacking}" if lacking else ""))
    print("units:\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(HERE / "study.yaml"), help="the study file (default: %(default)s)")
    parser.add_argument("--work", default=str(WORK), help="working folder, ignored by git (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS),
                        help="collected results; RESULTS.md is written beside it (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="make the data pools (and wheels) to carry to the GPU machine")
    p.add_argument("--wheels", action="store_true", help=f"also download wheels into .whl/: {', '.join(WHEELS)}")
    r = sub.add_parser("run", help="run pending units within a time budget")
    r.add_argument("--model", help="base model: .gguf file or HF folder (default: the study's)")
    r.add_argument("--budget-s", type=float, default=540, help="stop starting work after this many seconds")
    r.add_argument("--only", help="comma-separated unit names")
    r.add_argument("--retry-failed", action="store_true", help="run failed units again")
    r.add_argument("--bundle", help="write this machine's results here as a .tar.gz (e.g. $OUT/results.tar.gz)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--langs", help="evaluate the main models on these languages only, this time (e.g. en,zh); "
                                    "a later run without it adds the others (base: evaluation only; a tuned "
                                    "model is trained again)")
    r.add_argument("--lanes", type=int, default=1,
                   help="run up to N units side by side on the one GPU, each in its own process (default 1)")
    c = sub.add_parser("collect", help="unpack result bundles into benchmarks/reproduction/results")
    c.add_argument("bundles", nargs="+")
    c.add_argument("--force", action="store_true", help="replace units already collected")
    sub.add_parser("score", help="off-target rate of every collected translation output (lingua, CPU)")
    sub.add_parser("report", help="write RESULTS.md and the plots from the collected results")
    sub.add_parser("status", help="which units are done, failed or pending")
    args = parser.parse_args(argv)
    use_folders(Path(args.work), Path(args.results))
    try:
        study = load_study(Path(args.study))
        if args.command == "prepare":
            prepare(study, args.wheels)
        elif args.command == "run":
            model = args.model or str((REPO / study["model"]).resolve())
            only = args.only.split(",") if args.only else None
            cli = ["--study", args.study, "--work", args.work, "--results", args.results]
            langs = args.langs.split(",") if args.langs else None
            return run(study, model, args.budget_s, only, args.retry_failed, args.bundle, args.quiet, args.lanes, cli,
                       langs)
        elif args.command == "collect":
            collect(args.bundles, args.force)
        elif args.command == "score":
            score(study)
        elif args.command == "report":
            write_report(study, RESULTS, RESULTS.parent / "RESULTS.md")
        else:
            print_status(study)
    except (StudyError, XllamaError) as e:
        print(f"run_study.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
