"""`accelerate launch -m xllama eval ...` (here its launcher, torchrun) over 2 CPU processes (gloo) gives
exactly the outputs and scores of one process; the per-shard caches let a later run (with any number of
processes) resume without generating. The same sharding for `xllama align` and ALMA's validation loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from xllama.cli import main  # noqa: E402
from xllama.eval.results import read_results  # noqa: E402


def launch(args, processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # torchrun: what `accelerate launch --multi_gpu` runs underneath (accelerate's own CPU launcher needs MPI)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "xllama", *args]
    return run_group(cmd, env)


def run_group(cmd, env, timeout=600) -> str:
    """Run a launcher in its own process group, so that a timeout kills its workers too; returns stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def outputs(run, results):
    return {group: (run / path).read_text(encoding="utf-8") for group, path in results.extra["outputs"].items()}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.slow
def test_two_processes_translate_exactly_like_one(tiny_model, flores_dir, tmp_path, monkeypatch):
    # batches of 2 over 7 sentences: 4 batches, so each process generates two of them
    common = ["eval", "translation", "--model", str(tiny_model), "--data", str(flores_dir), "--pairs", "en-zh",
              "--limit", "7", "--batch-size", "2", "--max-new-tokens", "12", "--metrics", "bleu,chrf",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    stdout = launch([*common, "--out", str(tmp_path / "two")])
    assert stdout.count('"scores"') == 1  # one summary, from rank 0

    files = {run: sorted((tmp_path / run).glob("results_translation_*.json")) for run in ("one", "two")}
    assert len(files["one"]) == len(files["two"]) == 1
    one, two = read_results(files["one"][0]), read_results(files["two"][0])
    assert (one.extra["processes"], two.extra["processes"]) == (1, 2)
    assert outputs(tmp_path / "one", one) == outputs(tmp_path / "two", two)
    assert len(outputs(tmp_path / "one", one)["en-zh"].splitlines()) == 7
    assert one.scores == two.scores and one.signatures == two.signatures

    # each process cached its own shard; together they cover every sentence
    shards = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "two" / "cache").glob("*.jsonl"))
    assert shards == ["rank0of2.jsonl", "rank1of2.jsonl"]
    sizes = [sum(len(json.loads(line)["i"]) for line in p.read_text().splitlines()[1:])
             for p in sorted((tmp_path / "two" / "cache").glob("*.jsonl"))]
    assert sizes == [4, 3]

    # a one-process rerun on the two shards' cache generates nothing and writes the same outputs
    import xllama.eval.generate as engine

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although every output was cached")

    monkeypatch.setattr(engine, "_generate_batch", no_generation)
    assert main([*common, "--out", str(tmp_path / "two")]) == 0
    again = read_results(files["two"][0])
    assert outputs(tmp_path / "two", again) == outputs(tmp_path / "one", one) and again.scores == one.scores


@pytest.mark.slow  # two more launches (~30 s each on an idle 2-core machine)
def test_two_processes_resume_a_cut_shard_and_answer_qa_like_one(tiny_model, shared, tmp_path):
    xquad = shared / "data" / "eval" / "xquad"
    common = ["eval", "qa", "--model", str(tiny_model), "--data", str(xquad), "--lang", "zh", "--limit", "5",
              "--batch-size", "2", "--max-new-tokens", "6", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    launch([*common, "--out", str(tmp_path / "two")])
    # cut rank 1's shard mid-line (an interrupted append) and drop its last batch: the rerun regenerates it
    shard = next((tmp_path / "two" / "cache").glob("*.rank1of2.jsonl"))
    kept = shard.read_text().splitlines()[:-1]
    shard.write_text("\n".join(kept) + '\n{"i": [0, ')
    launch([*common, "--out", str(tmp_path / "two")])
    one, two = (read_results(next((tmp_path / run).glob("results_qa_*.json"))) for run in ("one", "two"))
    assert outputs(tmp_path / "one", one) == outputs(tmp_path / "two", two)
    assert one.scores == two.scores and two.extra["processes"] == 2


VALIDATION_SCRIPT = """
import json, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from xllama.alma.validate import validation_loss
from xllama.distributed import init_distributed, is_main_process

torch.set_num_threads(1)
rank, world = init_distributed()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
g = torch.Generator().manual_seed(0)
rows = [{"input_ids": torch.randint(5, 700, (n,), generator=g).tolist(), "prompt_length": n // 2,
         "direction": ["de-en", "en-de"][n % 2]} for n in range(6, 31)]
result = validation_loss(model, Dataset.from_list(rows), 0, batch_tokens=96, progress=False)
if is_main_process():
    json.dump({**result, "world": world}, open(sys.argv[2], "w"))
"""


@pytest.mark.slow  # a 2-process launch
def test_alma_validation_is_shared_by_two_processes(tiny_model, tmp_path):
    """ALMA stage 2's validation loss: each process scores half the batches; the gathered sums equal one
    process's (up to float summation order), per direction too."""
    script = tmp_path / "validate.py"
    script.write_text(VALIDATION_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(script), str(tiny_model), str(tmp_path / "one.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    run_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tiny_model), str(tmp_path / "two.json")], env)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one.pop("world"), two.pop("world")) == (1, 2)
    assert two["tokens"] == one["tokens"] and two["examples"] == one["examples"] == 25
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    assert set(two["by_direction"]) == {"de-en", "en-de"}
    for direction, scores in one["by_direction"].items():
        assert two["by_direction"][direction]["tokens"] == scores["tokens"]
        assert two["by_direction"][direction]["loss"] == pytest.approx(scores["loss"], rel=1e-6)


@pytest.mark.slow  # a 2-process launch
def test_align_over_two_processes_equals_one(tiny_model, flores_dir, tmp_path):
    from xllama.data.evalsets import load_flores

    for lang in ("en", "zh"):
        (tmp_path / f"s.{lang}").write_text("\n".join(load_flores(str(flores_dir), lang)[:7]) + "\n", encoding="utf-8")
    common = ["align", "--model", str(tiny_model), "--src-file", str(tmp_path / "s.en"), "--tgt-file",
              str(tmp_path / "s.zh"), "--pairs", "en-zh", "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    launch([*common, "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / run / "alignment.json").read_text()) for run in ("one", "two"))
    assert one["models"][0]["pairs"] == two["models"][0]["pairs"]
    assert one["models"][0]["pairs"]["en-zh"]["sentences"] == 7
