#!/usr/bin/env python
"""One GPU window of the reproduction study (issue 14): the device calls, prepared and bounded.

A window is 15 minutes of device time, machine start included, in calls of at most 10 minutes that carry at
most 64 MiB. The base model (the 98 MB SmolLM2 GGUF) travels in two halves, so every window has the same shape:

  call 1  stage:  part a of the model, the wheels the GPU machine lacks, the data pools (seconds)
  call 2  run:    part b completes the model; the study's pending units side by side in lanes, then a benchmark
  call 3  run:    whatever call 2 left (units resume from their checkpoints and generation caches), a benchmark

Window 1: call 2 runs priority 1 (base, alpaca, x-zh on FLORES and XQuAD en/zh) and the generation benchmark,
call 3 the training benchmark. Later windows: every pending unit of study.yaml in study order.

  python benchmarks/reproduction/window.py plan [--window N]      # here: the exact device calls (JSON)
  python benchmarks/reproduction/window.py stage --out $OUT       # device, call 1
  python benchmarks/reproduction/window.py run --out $OUT ...     # device, calls 2 and 3
  python benchmarks/reproduction/window.py collect FILES_AT       # here: results into the repository

Everything a call makes is under $OUT as soon as it exists (results.tar.gz is rewritten after every unit), so a
call cut short, or a next call that fails, loses nothing that finished. Nothing here needs a GPU to run: on a CPU
the same steps run (tests/test_reproduction.py rehearses them with a tiny model).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SITE = Path("/tmp/site")  # where the carried wheels are installed on the GPU machine (kept while it is warm)
if SITE.is_dir() and str(SITE) not in sys.path:  # installed by an earlier call of this window
    sys.path.insert(0, str(SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])])

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the shared file
PART_A, PART_B = ".device-model/a/part-00", ".device-model/b/part-01"  # ../shared/tools/split-model-for-device.sh
CARRY_LIMIT = 64 * 2**20
COMMAND_LIMIT = 2000
P1_UNITS, P1_LANGS = "base,alpaca,x-zh", "en,zh"
START = time.monotonic()
WORK = REPO / ".repro"  # the driver's working folder (run_study.py --work): pools, base model, runs, logs


# --- the plan: the device calls of a window -----------------------------------------------------------------

def _py(args: str) -> str:
    return f"PYTHONUNBUFFERED=1 python3 benchmarks/reproduction/window.py {args}"


def plan(window: int) -> list[dict]:
    """The device calls of window 1 (priority 1 and 2) or of a later window (pending units), in order."""
    stage = {"call": 1, "carry": [".device-model/a", ".repro/carry", ".whl"], "timeout_s": 150,
             "command": _py("stage --out $OUT"),
             "when": "first call of the window (starts the machine: 1-3 minutes of device time)"}
    if window == 1:
        return [stage,
                {"call": 2, "carry": [".device-model/b"], "timeout_s": 570,
                 "command": _py(f"run --out $OUT --model-part {PART_B} --only {P1_UNITS} --langs {P1_LANGS} "
                                "--lanes 3 --budget-s 300 --bench generation --call-limit-s 540"),
                 "when": "at once after call 1 returns (the machine stays warm 30 s)"},
                {"call": 3, "carry": [], "timeout_s": 330,
                 "command": _py(f"run --out $OUT --only {P1_UNITS} --langs {P1_LANGS} --lanes 3 --budget-s 150 "
                                "--bench training --call-limit-s 300"),
                 "when": "at once after call 2, if status says budget_left_s >= 200; set timeout_s to "
                         "budget_left_s - 20 and --call-limit-s to timeout_s - 30 when less is left; "
                         "else give_back (the training benchmark then moves to the next window's call 1: "
                         "stage --bench training)"}]
    return [stage,
            {"call": 2, "carry": [".device-model/b"], "timeout_s": 570,
             "command": _py(f"run --out $OUT --model-part {PART_B} --lanes 4 --budget-s 450 --call-limit-s 540"),
             "when": "at once after call 1 returns"},
            {"call": 3, "carry": [], "timeout_s": 330,
             "command": _py("run --out $OUT --lanes 4 --budget-s 240 --call-limit-s 300"),
             "when": "at once after call 2, if budget_left_s >= 120 (shorten as for window 1); else give_back"}]


def carried_bytes(paths: list[str]) -> int:
    """What a call carries: the working tree git would send (tracked + untracked, not ignored) + the paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = {REPO / f for f in listed if f and (REPO / f).is_file()}
    for rel in paths:
        p = REPO / rel
        files |= set(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else ({p} if p.is_file() else set())
    return sum(f.stat().st_size for f in files)


def check_plan(calls: list[dict], sizes: bool = True) -> list[str]:
    """Problems with a plan: commands over 2,000 characters, too many carried paths, over 64 MiB carried,
    carried paths missing here."""
    problems = []
    for c in calls:
        if len(c["command"]) > COMMAND_LIMIT:
            problems.append(f"call {c['call']}: command is {len(c['command'])} characters (limit {COMMAND_LIMIT})")
        if len(c["carry"]) > 8:
            problems.append(f"call {c['call']}: {len(c['carry'])} carried paths (limit 8)")
        if sizes:
            absent = [p for p in c["carry"] if not (REPO / p).exists()]
            if absent:
                problems.append(f"call {c['call']}: not made yet: {', '.join(absent)} (run the preparation steps)")
            c["carried_mib"] = round(carried_bytes(c["carry"]) / 2**20, 1)
            if c["carried_mib"] * 2**20 > CARRY_LIMIT:
                problems.append(f"call {c['call']}: carries {c['carried_mib']} MiB (limit 64 MiB)")
    return problems


# --- on the device ------------------------------------------------------------------------------------------

class Log:
    """window.log and window.json under $OUT, rewritten as the call goes (they come back even if it is cut)."""

    def __init__(self, out: Path, call: str):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.record = {"call": call, "argv": sys.argv[1:], "steps": [], "machine": {}}
        self.text = open(out / "window.log", "a", encoding="utf-8")

    def say(self, line: str) -> None:
        line = f"[{time.monotonic() - START:6.0f} s] {line}"
        print(line, flush=True)
        self.text.write(line + "\n")
        self.text.flush()

    def step(self, name: str, began: float, **info) -> None:
        self.record["steps"].append({"step": name, "wall_s": round(time.monotonic() - began, 1), **info})
        self.record["elapsed_s"] = round(time.monotonic() - START, 1)
        tmp = self.out / "window.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "window.json")


def machine() -> dict:
    import platform

    info = {"python": platform.python_version(), "cpu_cores": os.cpu_count()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError as e:
        info["error"] = str(e)
    return info


def install_wheels(log: Log) -> None:
    """The carried wheels (.whl/: datasets, dill, multiprocess, gguf) into /tmp/site, unless already importable."""
    missing = [m for m in ("datasets", "gguf") if importlib.util.find_spec(m) is None]
    if not missing:
        log.say("wheels: datasets and gguf already importable, nothing to install")
        return
    wheels = sorted(str(p) for p in (REPO / ".whl").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"window: {', '.join(missing)} missing and no wheels in .whl/ (carry it: prepare --wheels)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels], check=True)
    sys.path.insert(0, str(SITE))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])])
    log.say(f"wheels: installed {len(wheels)} into {SITE}")


def stage_dir() -> Path:
    return Path.home() / "stage"


def assemble_model(part_b: str, log: Log) -> Path:
    """~/stage/part-00 (call 1) + part b (this call) -> ~/SmolLM2-135M-Instruct.Q4_1.gguf, checked by sha256."""
    target = Path.home() / MODEL_NAME
    if not target.is_file():
        a, b = stage_dir() / "part-00", REPO / part_b
        for part in (a, b):
            if not part.is_file():
                raise SystemExit(f"window: model part {part} not found (call 1 stages part a; this call carries b)")
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            for part in (a, b):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 24)
        os.replace(tmp, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        target.unlink()
        raise SystemExit(f"window: {target} has sha256 {digest}, expected {MODEL_SHA256} (parts from another file?)")
    log.say(f"model: {target} ({target.stat().st_size / 2**20:.0f} MiB, sha256 checked)")
    return target


def driver_cli(args) -> list[str]:
    cli = [sys.executable, str(HERE / "run_study.py"), "--work", str(WORK)]
    for flag in ("study", "results"):
        if getattr(args, flag):
            cli += [f"--{flag}", getattr(args, flag)]
    return cli


def bench_shared() -> Path:
    """The shared-folder layout bench_train.py reads (its x-LLaMA zh mix), over the carried pools."""
    pool = WORK / "pool"
    root = WORK / "bench-shared"
    links = {"data/instructions/alpaca-en-zh/alpaca-en-zh.json": pool / "instructions" / "alpaca-en-zh.json",
             "data/parallel/alma-human-written/zhen": pool / "parallel" / "zhen",
             "data/eval/flores101/devtest": pool / "flores101",
             "data/eval/xquad": pool / "xquad"}
    for rel, target in links.items():
        link = root / rel
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
    return root


def run_bench(name: str, args, log: Log, left: float) -> None:
    """One benchmark, its own process, bounded by the time left in this call; its files go to $OUT/bench.tar.gz."""
    out = WORK / "bench" / name
    pool = WORK / "pool"
    if name == "generation":
        need = 60
        base = WORK / "models" / "base"  # the de-quantised GGUF (or the HF model the study ran on)
        argv = [sys.executable, "benchmarks/generation/bench_generate.py", "--model",
                str(base if (base / "config.json").is_file() else getattr(args, "model", None)), "--data",
                str(pool / "flores101"), "--pair", "en-zh", "--limit", str(args.gen_limit), "--max-new-tokens", str(args.gen_max_new_tokens), "--out", str(out)]
    else:
        need = 90
        argv = [sys.executable, "benchmarks/training/bench_train.py", "--shared", str(bench_shared()),
                "--tokenizer", str(pool / "tokenizer"), "--max-seconds", f"{max(30, min(left - 60, 300)):.0f}",
                "--out", str(out), *shlex.split(args.train_bench_args or "")]
    if left < need:
        log.say(f"bench {name}: not started ({left:.0f} s left in this call, needs {need})")
        return
    log.say(f"bench {name}: $ {shlex.join(argv[1:])}")
    began = time.monotonic()
    logfile = WORK / "logs" / f"bench-{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a", encoding="utf-8") as f:
        try:
            rc = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=left - 5).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    log.say(f"bench {name}: exit {rc} after {time.monotonic() - began:.0f} s")
    log.step(f"bench {name}", began, exit=rc, command=shlex.join(argv[1:]))
    pack(log.out / "bench.tar.gz", WORK / "bench")
    pack_logs(log.out)


def pack(path: Path, folder: Path) -> None:
    if not folder.is_dir():
        return
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=".")
    os.replace(tmp, path)


def pack_logs(out: Path) -> None:
    """The lanes' and benchmarks' logs (the units' own logs are in their work folders; failures in unit.json)."""
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lanes = WORK / "lanes"
    if lanes.is_dir():
        for f in lanes.glob("*.log"):
            shutil.copy(f, logs / f"lane-{f.name}")
    work = WORK / "work"
    for f in work.glob("*/logs/*.log") if work.is_dir() else []:
        shutil.copy(f, logs / f"{f.parent.parent.name}-{f.name}")
    pack(out / "logs.tar.gz", logs)


def stage(args) -> int:
    log = Log(Path(args.out), "stage")
    began = time.monotonic()
    part = REPO / PART_A
    if part.is_file():
        stage_dir().mkdir(parents=True, exist_ok=True)
        shutil.copy(part, stage_dir() / "part-00")
        log.say(f"staged {PART_A} in {stage_dir()}")
    else:
        log.say(f"no {PART_A} carried: model part a not staged")
    install_wheels(log)
    sys.path.insert(0, str(HERE))
    import run_study

    run_study.use_folders(WORK, run_study.RESULTS)
    run_study.unpack_pools()
    log.record["machine"] = machine()
    log.say(f"machine: {log.record['machine']}")
    log.step("stage", began)
    for name in (args.bench or "").split(","):
        if name:
            run_bench(name, args, log, args.call_limit_s - (time.monotonic() - START))
    return 0


def run(args) -> int:
    log = Log(Path(args.out), "run")
    log.record["machine"] = machine()
    began = time.monotonic()
    install_wheels(log)
    if args.model:
        model = Path(args.model)
    elif args.model_part:
        model = assemble_model(args.model_part, log)
    else:
        model = Path.home() / MODEL_NAME
        base = WORK / "models" / "base"
        if not model.is_file() and (base / "config.json").is_file():
            model = base  # de-quantised by an earlier call of this window
    args.model = str(model)
    log.step("model", began, model=str(model))
    left = args.call_limit_s - (time.monotonic() - START)
    budget = min(args.budget_s, left - 60)  # a phase stopped at the budget gets up to 45 s to checkpoint
    argv = [*driver_cli(args), "run", "--model", str(model), "--budget-s", f"{budget:.0f}", "--lanes",
            str(args.lanes), "--bundle", str(Path(args.out) / "results.tar.gz")]
    for flag in ("only", "langs"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    log.say(f"study: $ {shlex.join(argv[1:])}")
    began = time.monotonic()
    if budget >= 30:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if "%|" in line and "100%|" not in line:
                continue  # progress bars (\r-separated updates): only the last one of each
            log.say("  " + line.rstrip())
        rc = proc.wait()
    else:
        rc = "not started"
        log.say(f"study: not started ({budget:.0f} s of budget left)")
    log.step("study", began, exit=rc, command=shlex.join(argv[1:]))
    pack_logs(log.out)
    for name in (args.bench or "").split(","):
        if name:
            run_bench(name, args, log, args.call_limit_s - (time.monotonic() - START))
    log.say(f"call done after {time.monotonic() - START:.0f} s")
    return 0


# --- here ---------------------------------------------------------------------------------------------------

def collect(args) -> int:
    """A call's files (files_at): the study's units into results/, the benchmarks' files into their folders,
    the logs and window.json into .repro/windows/<time>/."""
    src = Path(args.files_at)
    keep = WORK / "windows" / time.strftime("%Y%m%d-%H%M%S")
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("window.json", "window.log", "logs.tar.gz"):
        if (src / name).is_file():
            shutil.copy(src / name, keep / name)
    print(f"kept the call's log and timings in {keep}")
    if (src / "results.tar.gz").is_file():
        cli = [*driver_cli(args), "collect", str(src / "results.tar.gz")]
        subprocess.run(cli, cwd=REPO, check=True)
    if (src / "bench.tar.gz").is_file():
        with tarfile.open(src / "bench.tar.gz") as tar:
            tar.extractall(keep / "bench", filter="data")
        bench = Path(args.bench_results) if args.bench_results else REPO / "benchmarks"
        targets = {"generation": bench / "generation" / "results", "training": bench / "training" / "results"}
        for name, target in targets.items():
            for f in sorted((keep / "bench" / name).glob("*")) if (keep / "bench" / name).is_dir() else []:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, target / f.name)
                print(f"benchmark file {target / f.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    global WORK, START
    START = time.monotonic()  # the call's clock (--call-limit-s) starts here
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", help="the study file (default: study.yaml beside this script)")
    parser.add_argument("--work", default=str(WORK), help="the driver's working folder (default: %(default)s)")
    parser.add_argument("--results", help="collected results (default: the driver's, results/ beside it)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print the device calls of a window and check them (sizes, lengths)")
    p.add_argument("--window", type=int, default=1, help="1: priority 1 and 2; 2 or more: pending units")
    for name, help_ in (("stage", "call 1: stage model part a, install the wheels, unpack the pools"),
                        ("run", "calls 2 and 3: complete the model, run pending units in lanes, benchmarks")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--out", required=True, help="the call's output folder ($OUT)")
        s.add_argument("--bench", help="benchmarks to run afterwards, in the time left: generation,training")
        s.add_argument("--call-limit-s", type=float, default=540, help="end this call within this many seconds")
        s.add_argument("--gen-limit", type=int, default=256, help="generation benchmark: FLORES sentences")
        s.add_argument("--gen-max-new-tokens", type=int, default=128)
        s.add_argument("--train-bench-args", help="extra arguments for bench_train.py (e.g. '--steps 2')")
    r = sub.choices["run"]
    r.add_argument("--model-part", help="part b of the split GGUF (with ~/stage/part-00 from call 1)")
    r.add_argument("--model", help="a base model instead (a .gguf or HF folder: rehearsals)")
    r.add_argument("--only", help="units (comma-separated; default: every pending unit)")
    r.add_argument("--langs", help="evaluate the main models on these languages only (a later run adds the rest)")
    r.add_argument("--lanes", type=int, default=3)
    r.add_argument("--budget-s", type=float, default=300, help="the study's time budget in this call")
    c = sub.add_parser("collect", help="here: bring a call's files (the run reply's files_at) into the repository")
    c.add_argument("files_at")
    c.add_argument("--bench-results", help="folder holding generation/results and training/results "
                                           "(default: benchmarks/)")
    args = parser.parse_args(argv)
    WORK = Path(args.work).resolve()
    if args.command == "plan":
        calls = plan(args.window)
        problems = check_plan(calls)
        print(json.dumps(calls, indent=2))
        for problem in problems:
            print(f"window plan: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return {"stage": stage, "run": run, "collect": collect}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
