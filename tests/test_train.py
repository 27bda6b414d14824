"""Training engine: loss falls, packing is exact, resume is exact, recipes are validated, errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xllama.cli import main
from xllama.data.tokenize import encode_pairs
from xllama.errors import XllamaError
from xllama.modeling import build_bpe_tokenizer, build_model_from_config
from xllama.prompts import alpaca_prompt
from xllama.train.config import Recipe, from_dict, load_recipe, validate
from xllama.train.packing import TokenStore, pack, packed_row, padded_batch, plan_step
from xllama.train.trainer import RunDir, train

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024}


@pytest.fixture(scope="module")
def records(shared):
    recs = json.loads((shared / "data/instructions/alpaca-tiny/alpaca_tiny.json").read_text())
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"], "source": "alpaca_en",
             "lang": "en", "direction": ""} for r in recs]


@pytest.fixture(scope="module")
def tokenizer(records):
    return build_bpe_tokenizer((r["instruction"] + "\n" + r["output"] for r in records), vocab_size=800)


def seeded_run(root: Path, records, tokenizer) -> Path:
    """A run directory whose text mix and tokenizer already exist (the trainer builds the rest)."""
    from datasets import Dataset

    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(records).save_to_disk(str(run.data))
    tokenizer.save_pretrained(run.tokenizer)
    return root


def tiny_recipe(**train) -> Recipe:
    cfg = {"epochs": 3, "learning_rate": 3e-3, "global_batch_size": 8, "micro_batch_tokens": 1024,
           "max_length": 512, "precision": "fp32", "device": "cpu", "save_every": 0, "warmup_ratio": 0.0}
    cfg.update(train)
    raw = {"name": "tiny", "model": {"init": TINY, "tokenizer": "bpe"}, "data": {"sample": True}, "train": cfg}
    return validate(from_dict(Recipe, raw, "test"), "test")


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_llama_trains_and_loss_falls(tmp_path, records, tokenizer):
    run = seeded_run(tmp_path / "run", records[:48], tokenizer)
    summary = train(tiny_recipe(epochs=3), run)
    curve = losses(run)
    assert summary["status"] == "completed" and len(curve) == summary["steps"] == 18
    assert np.mean(curve[-4:]) < np.mean(curve[:4]) - 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.num_hidden_layers == 2
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()


def test_packed_and_padded_batches_give_same_losses_and_gradients(records, tokenizer):
    prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in records[:6]]
    ids, plen, _ = encode_pairs(tokenizer, prompts, [r["output"] for r in records[:6]], 512)
    from datasets import Dataset

    store = TokenStore.from_dataset(Dataset.from_dict({"input_ids": ids, "prompt_length": plen}))
    model = build_model_from_config(dict(TINY, attn_implementation="sdpa"), vocab_size=len(tokenizer), seed=1)
    indices = list(range(6))

    def per_example(logits, labels, segments):
        tok = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
        return torch.stack([tok[s].sum() for s in segments])

    model.zero_grad()
    pad = {k: torch.from_numpy(v) for k, v in padded_batch(store, indices, tokenizer.pad_token_id).items()}
    out = model(input_ids=pad["input_ids"], attention_mask=pad["attention_mask"]).logits
    width = pad["input_ids"].shape[1]
    padded_losses = per_example(out, pad["labels"], [slice(b * width, (b + 1) * width) for b in indices])
    padded_losses.sum().backward()
    padded_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    row = {k: torch.from_numpy(v) for k, v in packed_row(store, indices).items()}
    out = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits
    bounds = np.concatenate([[0], np.cumsum(store.lengths[indices])])
    packed_losses = per_example(out, row["labels"], [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    packed_losses.sum().backward()

    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-4, atol=1e-4)
    for g_packed, g_padded in zip((p.grad for p in model.parameters()), padded_grads):
        torch.testing.assert_close(g_packed, g_padded, rtol=1e-3, atol=1e-5)
    # the packed row carries no padding at all
    assert row["input_ids"].shape[1] == int(store.lengths[indices].sum())


def test_step_plan_balances_ranks_and_equalises_micro_batches():
    from datasets import Dataset

    lengths = [300, 20, 500, 120, 64, 480, 33, 250, 90, 410]
    store = TokenStore.from_dataset(Dataset.from_dict({"input_ids": [[1] * n for n in lengths],
                                                       "prompt_length": [1] * len(lengths)}))
    plan = plan_step(0, store, global_batch_size=10, micro_batch_tokens=512, world_size=2, seed=0)
    assert len(plan[0]) == len(plan[1])  # same number of forward passes on every rank
    seen = sorted(i for rank in plan for mb in rank for i in mb)
    assert seen == list(range(10))
    for rank in plan:
        for mb in rank:
            assert sum(lengths[i] for i in mb) <= 512
    assert pack([0, 1], np.array([300, 300]), 512) == [[0], [1]]


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, records, tokenizer):
    from safetensors.torch import load_file

    full = seeded_run(tmp_path / "full", records[:24], tokenizer)
    part = seeded_run(tmp_path / "part", records[:24], tokenizer)
    recipe = tiny_recipe(epochs=2, save_every=0)  # 6 steps, crossing an epoch boundary after the interruption
    train(recipe, full)
    first = train(recipe, part, stop_after=2)
    assert first["status"] == "interrupted" and first["steps"] == 2
    assert (part / "checkpoints/step-2/trainer_state.json").is_file()
    with pytest.raises(XllamaError, match="--resume"):
        train(recipe, part)
    second = train(recipe, part, resume=True)
    assert second["status"] == "completed"
    assert losses(part) == pytest.approx(losses(full), rel=1e-5)
    a, b = load_file(full / "final/model.safetensors"), load_file(part / "final/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_tasks_tokenise_into_the_store_and_old_run_directories_resume(tmp_path, records, tokenizer, caplog):
    """A new run tokenises straight into RUN/store (stats.json inside, no RUN/tokenized); the examples are what
    encode_pairs makes of the mix. A run directory of an older xllama (RUN/tokenized, no RUN/store) resumes: the
    store is built once from the tokenised set, with a log line, byte for byte the store a new run writes."""
    import logging
    import shutil

    from datasets import Dataset

    from xllama.train.store import open_store
    from xllama.train.trainer import data_stats

    rows = records[:24]
    prompts = [alpaca_prompt(r["instruction"], r["input"]) for r in rows]
    ids, plen, expected = encode_pairs(tokenizer, prompts, [r["output"] for r in rows], 512)
    recipe = tiny_recipe(epochs=1)  # 3 steps
    run = seeded_run(tmp_path / "run", rows, tokenizer)
    assert train(recipe, run, stop_after=1)["status"] == "interrupted"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoints", "data", "store", "tokenizer"]
    store = open_store(run / "store")
    assert [store.example(i).tolist() for i in range(len(store))] == ids and store.prompt_lengths.tolist() == plen
    assert data_stats(RunDir(run)) == expected.as_dict() == json.loads((run / "store/stats.json").read_text())
    written = {name: (run / "store" / name).read_bytes() for name in ("tokens.bin", "offsets.npy", "meta.json")}

    shutil.rmtree(run / "store")  # the old layout: the tokenised datasets set and its stats, no store
    Dataset.from_dict({"input_ids": ids, "prompt_length": plen}).save_to_disk(str(run / "tokenized"))
    (run / "tokenized/stats.json").write_text(json.dumps(expected.as_dict()))
    with caplog.at_level(logging.WARNING, logger="xllama.train.trainer"):
        assert train(recipe, run, resume=True)["status"] == "completed"
    assert [r.getMessage() for r in caplog.records if "older xllama" in r.getMessage()] == [
        f"{run}: built the token store {run / 'store'} from the tokenised set of an older xllama (24 examples, "
        f"{sum(map(len, ids))} tokens); {run / 'tokenized'} is no longer used and may be deleted"]
    assert {name: (run / "store" / name).read_bytes() for name in written} == written
    assert open_store(run / "store").prompt_lengths.tolist() == plen
    assert json.loads((run / "store/stats.json").read_text()) == expected.as_dict()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_the_trainer_imports_no_higher_layer():
    """xllama/train/ knows tasks only through the registry's module names: no import of ALMA, evaluation,
    scaling or the CLI dispatcher, at module level or inside a function."""
    import ast

    root = Path(__file__).resolve().parents[1] / "xllama/train"
    higher = ("xllama.alma", "xllama.eval", "xllama.scaling", "xllama.align", "xllama.translate", "xllama.cli")
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith(higher)]
    assert found == []


def test_xllama_train_runs_each_tasks_own_entry():
    """The CLI looks the training entry up in the task registry: ALMA stage 2's module provides train() (train,
    then keep the best epoch); the other tasks use the trainer's."""
    from xllama.alma import stage2
    from xllama.train import trainer
    from xllama.train.data import task_module, task_train

    assert task_train("alma-parallel") is stage2.train
    assert all(task_train(t) is trainer.train for t in ("instruct", "alma-monolingual", "alma-cpo"))
    assert task_module("alma-parallel").tokenize is task_module("alma-monolingual").tokenize  # ALMA's data side
    with pytest.raises(XllamaError, match="unknown task 'nope'"):
        task_train("nope")


def test_recipe_validation_names_the_bad_key(tmp_path):
    with pytest.raises(XllamaError, match="lerning_rate"):
        load_recipe("quickstart", ["train.lerning_rate=1"])
    with pytest.raises(XllamaError, match=r"train.global_batch_size: expected int"):
        load_recipe("quickstart", ["train.global_batch_size=big"])
    with pytest.raises(XllamaError, match="precision"):
        load_recipe("quickstart", ["train.precision=fp8"])
    with pytest.raises(XllamaError, match="micro_batch_tokens"):
        load_recipe("quickstart", ["train.micro_batch_tokens=100"])
    with pytest.raises(XllamaError, match="known recipes: .*quickstart"):
        load_recipe("no-such-recipe")
    paper = load_recipe("x-llama-7b", languages=["zh"])
    assert (paper.train.epochs, paper.train.learning_rate, paper.train.global_batch_size) == (3, 2e-5, 128)
    assert (paper.train.warmup_ratio, paper.train.max_length, paper.train.lr_scheduler) == (0.03, 512, "cosine")
    assert paper.data["mix"] == "x-llama" and "zh" in paper.data["instructions"]
    assert load_recipe("m-llama-7b", languages=["ar", "zh"]).data["mix"] == "m-llama"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_recipe_without_gpu_names_the_cpu_recipe(tmp_path, capsys):
    assert main(["train", "--lang", "zh", "--out", str(tmp_path / "r")]) == 2
    assert "quickstart" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_clear_errors_for_bad_model_length_and_no_trainable_tokens(tmp_path, records, tokenizer):
    run = seeded_run(tmp_path / "a", records[:8], tokenizer)
    recipe = tiny_recipe()
    recipe.model.init, recipe.model.name_or_path = None, str(tmp_path / "missing-model")
    with pytest.raises(XllamaError, match="not a directory or a .gguf"):
        train(recipe, run)
    recipe = tiny_recipe()
    recipe.model.init, recipe.model.name_or_path = None, "no-such-org/no-such-model"
    with pytest.raises(XllamaError, match="neither a local path nor reachable"):
        train(recipe, seeded_run(tmp_path / "b", records[:8], tokenizer))
    with pytest.raises(XllamaError, match="exceeds the model's maximum sequence length 1024"):
        train(tiny_recipe(max_length=2048, micro_batch_tokens=4096), seeded_run(tmp_path / "c", records[:8], tokenizer))
    with pytest.raises(XllamaError, match="no trainable tokens"):
        train(tiny_recipe(max_length=16, micro_batch_tokens=64), seeded_run(tmp_path / "d", records[:8], tokenizer))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.yaml", "data", "tokenizer"]  # no store


FSDP_CPU = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_offload_params: false
"""


@pytest.mark.slow
def test_two_process_fsdp_run_saves_a_loadable_checkpoint(tmp_path, records, tokenizer):
    """FSDP2 full shard over 2 CPU processes (gloo): trains, checkpoints, saves a from_pretrained checkpoint."""
    run = seeded_run(tmp_path / "run", records[:32], tokenizer)
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CPU)
    recipe = tmp_path / "tiny.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe(epochs=1, save_every=2).to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "xllama",
           "train", "--recipe", str(recipe), "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert (run / "checkpoints/step-2/trainer_state.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]


@pytest.mark.slow
def test_shared_smollm2_gguf_trains_a_few_steps_and_saves(tmp_path, records, smollm_gguf):
    from xllama.modeling import load_tokenizer

    run = seeded_run(tmp_path / "run", records[:8], load_tokenizer(str(smollm_gguf)))
    raw = {"name": "smollm2", "model": {"name_or_path": str(smollm_gguf)}, "data": {"sample": True},
           "train": {"epochs": 1, "max_steps": 2, "learning_rate": 1e-5, "global_batch_size": 4,
                     "micro_batch_tokens": 1024, "max_length": 512, "precision": "fp32", "device": "cpu",
                     "save_every": 0}}
    summary = train(validate(from_dict(Recipe, raw, "t"), "t"), run)
    assert summary["status"] == "completed" and summary["parameters"] > 100e6
    assert all(np.isfinite(losses(run)))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.num_hidden_layers == 30


def test_quickstart_command_runs_end_to_end(tmp_path, capsys):
    """The README's first command, shortened to a few steps: sample mix -> BPE tokenizer -> tiny Llama -> model."""
    out = tmp_path / "qs"
    assert main(["train", "--recipe", "quickstart", "--lang", "zh", "--out", str(out), "--max-steps", "3"]) == 0
    assert f"model:    {out / 'final'}" in capsys.readouterr().out  # the human summary; JSON in summary.json
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    manifest = json.loads((out / "data/manifest.json").read_text())
    assert manifest["by_source"]["translation"] > 0 and manifest["by_source"]["alpaca_zh"] > 0
    assert (out / "final/model.safetensors").is_file() and (out / "final/tokenizer.json").is_file()
    # a second start on the same directory must not silently overwrite it
    assert main(["train", "--recipe", "quickstart", "--lang", "zh", "--out", str(out)]) == 2


def test_dry_run_builds_and_reports_the_mix(tmp_path, capsys):
    assert main(["train", "--recipe", "quickstart", "--lang", "zh,de", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifest"]["examples"] == report["tokenized"]["examples"] + report["tokenized"]["dropped_no_target"]
    assert set(report["manifest"]["by_lang"]) >= {"zh", "de", "en"}


def test_batch_encode_ignores_padding_left_by_an_earlier_call(tokenizer):
    from xllama.data.tokenize import batch_encode

    clean = batch_encode(tokenizer, ["a b c", "a"], add_special_tokens=False)
    tokenizer("x", padding="longest", truncation=True, max_length=512)
    assert batch_encode(tokenizer, ["a b c", "a"], add_special_tokens=False) == clean
    assert len(clean[1]) < len(clean[0])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, records, tokenizer):
    """A scheduler's SIGTERM: the step in flight finishes, a checkpoint is written, the process exits 0."""
    import signal
    import time

    import yaml

    run = seeded_run(tmp_path / "run", records[:48], tokenizer)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(epochs=50).to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "xllama", "train", "--recipe", str(recipe), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < summary["total_steps"]
    assert (run / f"checkpoints/step-{summary['steps']}/trainer_state.json").is_file()
    assert not (run / "final").exists()


# --- scale-out: FSDP2 plan, exact multi-process equivalence, whole-or-absent checkpoints (issue 12) ----------

def torchrun(tmp_path, recipe: Recipe, run: Path, *extra: str, nproc: int = 2, env: dict | None = None):
    """Train ``recipe`` into ``run`` on ``nproc`` CPU processes (gloo) through torchrun and tests/train_worker.py."""
    import yaml

    path = tmp_path / f"recipe-{run.name}.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(Path(__file__).parent / "train_worker.py"), str(path), str(run), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def dropout_recipe(**train) -> Recipe:
    """Dropout on; rows of 128 tokens and examples of 89-128 tokens: every row holds one example whatever the
    world size, so a row's dropout mask (seeded by its content) is the same in a 1- and a 2-process run."""
    recipe = tiny_recipe(**{"epochs": 1, "global_batch_size": 8, "micro_batch_tokens": 128, "max_length": 128,
                            "learning_rate": 3e-3, **train})
    recipe.model.init = dict(TINY, attention_dropout=0.2)
    return recipe


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "final/model.safetensors")


@pytest.mark.slow
def test_two_process_fsdp2_equals_one_process_with_dropout(tmp_path, records, tokenizer):
    """FSDP2 over 2 gloo processes, 4 micro-batches per rank per step, dropout on = the 1-process run: same loss
    curve (rel 1e-5) and final weights (atol 1e-4: Adam divides by the root of tiny second moments, which amplifies
    the reduction-order differences of rarely seen embedding rows; a step moves weights by up to lr = 3e-3); the plan
    reports per-layer units, fp32 masters and fp32 reduction."""
    recipe = dropout_recipe()
    one = seeded_run(tmp_path / "one", records[:32], tokenizer)
    two = seeded_run(tmp_path / "two", records[:32], tokenizer)
    train(recipe, one)
    torchrun(tmp_path, recipe, two)
    plan = json.loads((two / "plan.json").read_text())
    assert plan["engine"] == "fsdp2" and plan["world_size"] == 2
    assert plan["units"] == ["model.layers.0", "model.layers.1", "<root>"]
    assert (plan["master_dtype"], plan["reduce_dtype"], plan["param_dtype"]) == ("float32", "float32", "float32")
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["micro_batches"] for m in metrics] == [4, 4, 4, 3]  # 30 examples: 8, 8, 8, 6
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a, b = final_weights(one), final_weights(two)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4)
    # dropout is really on: the same run without it has another loss curve
    off = seeded_run(tmp_path / "off", records[:32], tokenizer)
    no_dropout = dropout_recipe()
    no_dropout.model.init = dict(TINY, attention_dropout=0.0)
    train(no_dropout, off)
    assert losses(off)[0] != pytest.approx(losses(one)[0], rel=1e-4)


@pytest.mark.slow
def test_resumed_two_process_run_equals_uninterrupted_with_a_slow_rank(tmp_path, records, tokenizer):
    """2 processes, interrupted at step 3 while rank 1 is 4 s late writing its checkpoint state, resumed: the
    checkpoint holds every rank's state, and the run ends as the uninterrupted one (loss curve, data order,
    weights). The uninterrupted reference runs in one process (equal to two: the test above)."""
    recipe = dropout_recipe(epochs=1.5, save_every=0)  # 6 steps; the epoch boundary after step 4
    full = seeded_run(tmp_path / "full", records[:32], tokenizer)
    part = seeded_run(tmp_path / "part", records[:32], tokenizer)
    train(recipe, full)
    torchrun(tmp_path, recipe, part, "--stop-after", "3", env={"XLLAMA_TEST_SLOW_CHECKPOINT_RANK": "1:4"})
    step3 = part / "checkpoints/step-3"
    assert (step3 / "ranks/rank-0.json").is_file() and (step3 / "ranks/rank-1.json").is_file()
    assert (step3 / "dcp/.metadata").is_file() and not list((part / "checkpoints").glob(".step-*"))
    torchrun(tmp_path, recipe, part, "--resume")
    ref = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in got] == list(range(1, 7))
    assert [(m["examples"], m["tokens"], m["target_tokens"]) for m in got] == \
        [(m["examples"], m["tokens"], m["target_tokens"]) for m in ref]
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in ref], rel=1e-5)
    a, b = final_weights(full), final_weights(part)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4)


def cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """transformers' cosine schedule with linear warm-up: the rate used by 0-based step ``step``."""
    import math

    if step < warmup:
        return base * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_resume_lr_schedule_tensorboard_and_incomplete_checkpoints(tmp_path, records, tokenizer):
    """One interrupted single-process run, resumed: logged rates follow the schedule's formula at the first, a
    warm-up and the last step, also after the resume; tensorboard event files hold the same losses as
    metrics.jsonl. A copy of the interrupted run shows that resume refuses a checkpoint lacking a rank's state
    (naming the file), refuses changed settings other than max_steps, and applies --max-steps."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe(epochs=2, warmup_ratio=0.25, lr_scheduler="cosine", report_to=["tensorboard"])
    run = seeded_run(tmp_path / "run", records[:24], tokenizer)  # 3 steps per epoch: 6 steps, warm-up 2
    assert train(recipe, run, stop_after=3)["status"] == "interrupted"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert train(recipe, run, resume=True)["status"] == "completed"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    base = recipe.train.learning_rate
    for m in metrics:
        assert m["lr"] == pytest.approx(cosine_lr(m["step"] - 1, base, 2, 6), abs=1e-12), m["step"]
    assert metrics[0]["lr"] == 0.0 and metrics[1]["lr"] == pytest.approx(base / 2) and metrics[-1]["lr"] > 0

    events = EventAccumulator(str(run / "logs" / run.name))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [e.step for e in scalars] == list(range(1, 7))
    assert [e.value for e in scalars] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)

    state_file = copy / "checkpoints/step-3/ranks/rank-0.json"
    state_file.rename(tmp_path / "rank-0.json")
    with pytest.raises(XllamaError, match="rank-0.json"):
        train(recipe, copy, resume=True)
    (tmp_path / "rank-0.json").rename(state_file)
    trainer_state = copy / "checkpoints/step-3/trainer_state.json"
    saved = trainer_state.read_text()
    trainer_state.write_text(json.dumps(dict(json.loads(saved), world_size=2)))
    with pytest.raises(XllamaError, match="rank-1.json"):
        train(recipe, copy, resume=True)
    trainer_state.write_text(saved)
    with pytest.raises(XllamaError, match=r"train.learning_rate \(the run has 0.003, given 0.1\)"):
        train(recipe, copy, resume=True, overrides=["train.learning_rate=0.1"])
    summary = train(recipe, copy, resume=True, overrides=["train.max_steps=4", "train.seed=42"])
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert "max_steps: 4" in (copy / "config.yaml").read_text()


def test_keep_checkpoints_and_report_to_are_validated():
    with pytest.raises(XllamaError, match="keep_checkpoints: must be >= 1"):
        load_recipe("quickstart", ["train.keep_checkpoints=0"])
    with pytest.raises(XllamaError, match="report_to: unknown tracker"):
        load_recipe("quickstart", ["train.report_to=[tensorbored]"])
    with pytest.raises(XllamaError, match="tensorboard"):  # the old key is gone, not silently accepted
        load_recipe("quickstart", ["train.tensorboard=true"])


def test_mixed_precision_policy_reduces_in_fp32_by_default():
    from xllama.train.parallel import mixed_precision_policy

    policy = mixed_precision_policy("bf16", "float32")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy("bf16", "bfloat16").reduce_dtype == torch.bfloat16
    assert mixed_precision_policy("fp32", "float32").param_dtype == torch.float32
    assert load_recipe("x-llama-7b", languages=["zh"]).train.reduce_dtype == "float32"


def test_final_model_is_saved_in_the_base_model_dtype(tmp_path, records, tokenizer):
    """A bf16 base model gives a bf16 final model (not the fp32 training weights); train.save_dtype overrides."""
    from transformers import AutoModelForCausalLM

    base = build_model_from_config(TINY, vocab_size=len(tokenizer), seed=0).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    recipe = tiny_recipe(max_steps=1)
    recipe.model.init, recipe.model.name_or_path = None, str(tmp_path / "base")
    run = seeded_run(tmp_path / "run", records[:8], tokenizer)
    train(recipe, run)
    assert {v.dtype for v in final_weights(run).values()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(run / "final", dtype="auto").dtype == torch.bfloat16
    recipe.train.save_dtype = "float32"
    run = seeded_run(tmp_path / "run32", records[:8], tokenizer)
    train(recipe, run)
    assert {v.dtype for v in final_weights(run).values()} == {torch.float32}


def test_epoch_permutation_is_made_once_per_epoch():
    from xllama.train.packing import epoch_order, step_examples

    epoch_order.cache_clear()
    seen = [step_examples(s, 1000, 100, seed=3) for s in range(10)]  # one epoch: 10 steps
    assert epoch_order.cache_info().misses == 1
    assert sorted(np.concatenate(seen).tolist()) == list(range(1000))
    step_examples(10, 1000, 100, seed=3)  # the next epoch: a new permutation
    assert epoch_order.cache_info().misses == 2


@pytest.mark.slow
def test_two_process_bf16_reduction_is_what_the_plan_reports(tmp_path, records, tokenizer):
    """train.reduce_dtype: bfloat16 on 2 gloo processes, tied embeddings: the plan reports a bf16 reduction, the
    first step (same weights, rank 0's broadcast) has the 1-process loss, later steps differ by bf16 rounding only."""
    recipe = dropout_recipe(reduce_dtype="bfloat16")
    recipe.model.init = dict(TINY, attention_dropout=0.2, tie_word_embeddings=True)
    one = seeded_run(tmp_path / "one", records[:32], tokenizer)
    two = seeded_run(tmp_path / "two", records[:32], tokenizer)
    train(recipe, one)
    torchrun(tmp_path, recipe, two)
    plan = json.loads((two / "plan.json").read_text())
    assert (plan["param_dtype"], plan["reduce_dtype"], plan["master_dtype"]) == ("float32", "bfloat16", "float32")
    a, b = losses(one), losses(two)
    assert b[0] == pytest.approx(a[0], rel=1e-6)
    assert b == pytest.approx(a, rel=1e-3) and b[1:] != pytest.approx(a[1:], rel=1e-6)
