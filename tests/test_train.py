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
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
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
