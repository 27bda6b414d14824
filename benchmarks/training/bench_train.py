"""Training throughput on the real x-LLaMA zh length distribution: HF Trainer (padded, and flattened) vs xllama.

Data: the x-LLaMA Chinese mix built by xllama's mixer from the shared data, tokenised by xllama's own
``tokenize_instructions`` with the shared SmolLM2 tokenizer (max length 512, response-only loss, EOS appended).
Every configuration trains on exactly these tokenised examples.

Padding analysis (always; ``--padding-only`` stops there, seconds on a CPU): real tokens / computed tokens over
one epoch for (a) the reference recipe (batches of 4, random order, padded to the longest in the batch), (b) HF
``DataCollatorWithFlattening`` (the same batches of 4 as one row), (c) xllama's plan (``plan_step`` with the
recipe's global batch and micro_batch_tokens), each at world size 1 and 8.

Training (default; one subprocess per configuration, all in one run, bounded by ``--max-seconds``): a randomly
initialised Llama, 1.1B shape on a GPU (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 49152),
for ``--warmup-steps`` + ``--steps`` optimiser steps of
  (a) HF Trainer, fp32 master weights + bf16 autocast, batch 4 x accumulation 4, padded to the longest, random order;
  (b) the same with ``DataCollatorWithFlattening``;
  (c) ``xllama.train.trainer.train`` with a recipe built here (bf16, global batch 128, micro_batch_tokens 16384).
Reported over the timed steps: real (non-padding) tokens/s, MFU (6 N tokens + causal attention FLOPs of the real
examples, against the GPU's dense bf16 peak) and peak GPU memory, with the goals ((c) >= 1.6x (a), not slower
than (b); on an H100/H200 >= 38,000 real tokens/s and peak memory no higher than (b)). (a), (b) use
flash_attention_2 when installed, else sdpa; (c) xllama's choice (flash varlen, else FlexAttention on a GPU).
On a CPU the same code runs with a small Llama (hidden 256, 4 layers, vocab 49,152) in fp32; peak memory is then
the worker's peak RSS.

    python benchmarks/training/bench_train.py --padding-only               # CPU: padding efficiency
    python benchmarks/training/bench_train.py --warmup-steps 1 --steps 5   # CPU: small model, all three paths
    python benchmarks/training/bench_train.py                              # GPU: 1.1B, 3 warm-up + 10 timed steps

Writes ``<out>/padding.md|json`` or ``<out>/train_<cpu|cuda>.md|json`` (default out: runs/benchmarks/training, ignored by git).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from benchmarks.common import cpu_name, zh_mix_spec  # noqa: E402
from xllama.io import atomic_write_json, atomic_write_text, shared_dir  # noqa: E402

IGNORE_INDEX = -100
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
            "tie_word_embeddings": False}
LLAMA_SMALL = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
               "tie_word_embeddings": False}  # the CPU comparison: a Llama shape that trains a few steps in minutes
LLAMA_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
              "tie_word_embeddings": False}
CONFIGS = {
    "a": "HF Trainer, padded to longest (reference)",
    "b": "HF Trainer + DataCollatorWithFlattening",
    "c": "xllama train()",
}


# --- data ------------------------------------------------------------------------------------------------------

def prepare_data(shared: Path, tokenizer_spec: str, max_length: int, work: Path) -> dict:
    """Build the mix, save the tokenizer and tokenise with xllama's own function into the token store, in
    xllama's run-dir layout (data/, tokenizer/, store/), so that the trainer finds them and every configuration
    uses the same examples."""
    from xllama.data.mix import MixSpec, build_mix, write_mix
    from xllama.data.tokenize import tokenize_instructions
    from xllama.modeling import load_tokenizer
    from xllama.train.store import StoreWriter

    started = time.perf_counter()
    dataset, manifest = build_mix(MixSpec.from_dict(zh_mix_spec(shared), where="benchmark mix"), progress=False)
    write_mix(dataset, manifest, work / "data", progress=False)
    tokenizer = load_tokenizer(tokenizer_spec)
    tokenizer.save_pretrained(work / "tokenizer")
    with StoreWriter(work / "store", len(tokenizer), progress=False) as writer:
        writer.stats = stats = tokenize_instructions(dataset, tokenizer, max_length, writer)
    print(f"data: {len(dataset):,} examples {manifest['by_source']} -> {stats} in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    return {"mix_examples": len(dataset), "by_source": manifest["by_source"], "tokenize_stats": stats,
            "content_hash": manifest["content_hash"]}


def load_store(work: Path):
    from xllama.train.store import open_store

    return open_store(work / "store")


# --- padding analysis ------------------------------------------------------------------------------------------

def _rank_batches(num_examples: int, batch: int, world: int, seed: int) -> list[list[list[int]]]:
    """HF Trainer's order: one seeded permutation, rank r takes every world-th index (DistributedSampler), then
    consecutive batches of ``batch``. Returns [rank][micro-batch] -> example indices."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(num_examples)
    out = []
    for r in range(world):
        shard = order[r::world].tolist()
        out.append([shard[k:k + batch] for k in range(0, len(shard), batch)])
    return out


def _tally(costs: list[list[int]], rows: list[list[list[int]]], lengths, config) -> dict:
    """costs[rank][j]: tokens computed by rank's j-th forward pass; rows[rank][j]: its rows' example-length lists.

    padding efficiency = real / sum of computed tokens (a filler pass counts its tokens);
    lock-step efficiency = real / (world * sum_j max_rank cost[rank][j]): ranks run micro-batch j together, so a
    rank with a shorter (or filler) pass waits for the longest one, which is what a synchronous step costs;
    sdpa FLOP efficiency (1.1B shape) = useful FLOPs / FLOPs computed when attention runs densely over each row
    under a mask (sdpa with a padding or block-diagonal mask: no causal or block skipping).
    """
    world = len(costs)
    real = int(sum(int(x) for x in lengths))
    computed = sum(sum(c) for c in costs)
    passes = max(len(c) for c in costs)
    lockstep = world * sum(max(c[j] if j < len(c) else 0 for c in costs) for j in range(passes))
    n_params, layers, hidden = config
    useful = 6.0 * n_params * real + 6.0 * layers * hidden * sum(float(x) ** 2 for x in lengths)
    dense_attention = sum(12.0 * layers * hidden * sum(float(w) ** 2 for w in row)
                          for rank_rows in rows for row in rank_rows)
    dense = 6.0 * n_params * computed + dense_attention
    return {"real_tokens": real, "computed_tokens": int(computed), "lockstep_tokens": int(lockstep),
            "padding_efficiency": real / computed, "lockstep_efficiency": real / lockstep,
            "sdpa_flop_efficiency": useful / dense}


def padding_reference(lengths, batch: int, world: int, seed: int, config) -> dict:
    costs, rows = [], []
    for mbs in _rank_batches(len(lengths), batch, world, seed):
        costs.append([len(mb) * int(max(lengths[i] for i in mb)) for mb in mbs])
        rows.append([[int(max(lengths[i] for i in mb))] * len(mb) for mb in mbs])  # each row padded to the longest
    return _tally(costs, rows, lengths, config)


def padding_flattening(store, batch: int, world: int, seed: int, config) -> dict:
    """Runs transformers' DataCollatorWithFlattening on every batch and counts what it returns."""
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_tensors="np")
    lengths = store.lengths
    costs, rows = [], []
    for mbs in _rank_batches(len(store), batch, world, seed):
        rank_costs, rank_rows = [], []
        for mb in mbs:
            features = [{"input_ids": store.example(i).tolist()} for i in mb]
            out = collator(features)
            rank_costs.append(int(out["input_ids"].size))
            rank_rows.append([int(out["input_ids"].shape[1])])
        costs.append(rank_costs)
        rows.append(rank_rows)
    return _tally(costs, rows, lengths, config)


def padding_xllama(store, global_batch: int, micro_batch_tokens: int, world: int, seed: int, config) -> dict:
    """xllama's plan for one epoch: packed rows, no padding. A filler pass (a rank with fewer micro-batches than
    another in that step) counts as its 1 token for padding efficiency, and as the longest row it waits for in
    lock-step efficiency (maxima taken per optimiser step: each step has its own plan)."""
    from xllama.train.packing import plan_step, steps_per_epoch

    lengths = store.lengths
    real = computed = lockstep = fillers = 0
    useful_attention = dense_attention = 0.0
    n_params, layers, hidden = config
    for step in range(steps_per_epoch(len(store), global_batch)):
        plan = plan_step(step, store, global_batch, micro_batch_tokens, world, seed)
        widths = [[int(lengths[mb].sum()) if mb else 1 for mb in mbs] for mbs in plan]
        fillers += sum(not mb for mbs in plan for mb in mbs)
        computed += sum(sum(w) for w in widths)
        lockstep += world * sum(max(w[j] for w in widths) for j in range(len(widths[0])))
        for mbs in plan:
            for mb in mbs:
                real += int(lengths[mb].sum()) if mb else 0
                useful_attention += float((lengths[mb].astype(float) ** 2).sum()) if mb else 0.0
        dense_attention += sum(12.0 * layers * hidden * float(w) ** 2 for ws in widths for w in ws)
    useful = 6.0 * n_params * real + 6.0 * layers * hidden * useful_attention
    dense = 6.0 * n_params * computed + dense_attention
    return {"real_tokens": real, "computed_tokens": computed, "lockstep_tokens": lockstep,
            "padding_efficiency": real / computed, "lockstep_efficiency": real / lockstep,
            "sdpa_flop_efficiency": useful / dense, "filler_passes": fillers}


def padding_analysis(store, settings: dict) -> dict:
    import numpy as np

    lengths = store.lengths
    config = (_num_params(LLAMA_1B, 49152), LLAMA_1B["num_hidden_layers"], LLAMA_1B["hidden_size"])
    seed = settings["seed"]
    out = {"examples": len(store), "length": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                                              "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
                                              "total_tokens": int(lengths.sum())}, "rows": []}
    for world in (1, 8):
        started = time.perf_counter()
        rows = [
            ("a", f"reference: batch {settings['ref_batch']}, pad to longest, random order",
             padding_reference(lengths, settings["ref_batch"], world, seed, config)),
            ("b", f"HF DataCollatorWithFlattening, batch {settings['ref_batch']}",
             padding_flattening(store, settings["ref_batch"], world, seed, config)),
            ("c", f"xllama plan_step, global batch {settings['pad_global_batch']}, "
                  f"micro_batch_tokens {settings['pad_micro_batch_tokens']}",
             padding_xllama(store, settings["pad_global_batch"], settings["pad_micro_batch_tokens"], world, seed,
                            config)),
        ]
        for key, name, r in rows:
            out["rows"].append({"config": key, "method": name, "world_size": world, **r})
        print(f"padding analysis, world size {world}: {time.perf_counter() - started:.0f}s", flush=True)
    return out


def padding_table(p: dict) -> str:
    ln = p["length"]
    lines = [
        f"{p['examples']:,} examples, {ln['total_tokens']:,} tokens; length mean {ln['mean']:.1f}, median "
        f"{ln['median']:.0f}, p95 {ln['p95']:.0f}, max {ln['max']} (one epoch, seeded random order)",
        "",
        "| method | world size | real tokens | computed tokens | padding efficiency | lock-step efficiency "
        "| sdpa FLOP efficiency (1.1B) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in p["rows"]:
        fill = f" ({r['filler_passes']:,} filler passes)" if r.get("filler_passes") else ""
        lines.append(f"| ({r['config']}) {r['method']}{fill} | {r['world_size']} | {r['real_tokens']:,} "
                     f"| {r['computed_tokens']:,} | {r['padding_efficiency']:.3f} | {r['lockstep_efficiency']:.3f} "
                     f"| {r['sdpa_flop_efficiency']:.3f} |")
    return "\n".join(lines) + "\n"


# --- training: shared helpers (run inside the worker subprocesses) ------------------------------------------------

def _num_params(shape: dict, vocab: int) -> int:
    """Parameters of a Llama of this shape (embeddings and LM head counted, untied unless tied)."""
    h, m, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    heads = vocab * h * (1 if shape.get("tie_word_embeddings") else 2)
    return layers * per_layer + heads + h


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _summarise(step_lengths: list[list[int]], step_seconds: list[float], warmup: int, num_params: int, shape: dict,
               peak_tflops: float | None) -> dict:
    from xllama.train.trainer import flops_per_step

    class _Shape:  # flops_per_step reads the config's attributes
        num_hidden_layers = shape["num_hidden_layers"]
        hidden_size = shape["hidden_size"]

    timed_lengths, timed_seconds = step_lengths[warmup:], step_seconds[warmup:]
    tokens = sum(sum(x) for x in timed_lengths)
    seconds = sum(timed_seconds)
    flops = sum(flops_per_step(num_params, _Shape, x) for x in timed_lengths)
    return {"timed_steps": len(timed_seconds), "timed_seconds": seconds, "real_tokens": tokens,
            "examples": sum(len(x) for x in timed_lengths), "tokens_per_s": tokens / seconds if seconds else None,
            "mfu": flops / seconds / (peak_tflops * 1e12) if peak_tflops and seconds else None,
            "step_seconds": step_seconds}


def _hf_trainer_run(settings: dict, flatten: bool) -> dict:
    """(a) / (b): transformers.Trainer on the tokenised examples, timing every optimiser step."""
    import torch
    from torch.nn.utils.rnn import pad_sequence
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    from xllama.modeling import build_model_from_config, load_tokenizer

    work = Path(settings["work"])
    tokenizer = load_tokenizer(str(work / "tokenizer"))
    store = load_store(work)
    cuda = torch.cuda.is_available()

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(store)

        def __getitem__(self, i):
            ids = store.example(i).tolist()
            p = int(store.prompt_lengths[i])
            return {"input_ids": ids, "labels": [IGNORE_INDEX] * p + ids[p:]}

    def pad_to_longest(features):
        """Stanford Alpaca's DataCollatorForSupervisedDataset (the mask from lengths, so a real EOS that equals
        the pad token is not hidden)."""
        ids = [torch.tensor(f["input_ids"]) for f in features]
        labels = [torch.tensor(f["labels"]) for f in features]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
        lengths = torch.tensor([len(x) for x in ids])
        return {"input_ids": input_ids, "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
                "attention_mask": (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()}

    collate = DataCollatorWithFlattening(return_position_ids=True) if flatten else pad_to_longest
    calls: list[list[int]] = []  # example lengths of every collated micro-batch, in order

    def counting_collator(features):
        calls.append([len(f["input_ids"]) for f in features])
        return collate(features)

    deadline = settings["deadline"]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends, self.peak = [], None

        def on_train_begin(self, args, state, control, **kwargs):
            _sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.ends.append(time.perf_counter())
            self.peak = _peak_gib()
            if time.time() > deadline:
                control.should_training_stop = True

    shape = settings["shape"]
    model = build_model_from_config(dict(shape, attn_implementation=settings["attn_hf"]), vocab_size=len(tokenizer),
                                    seed=settings["seed"])
    model.config.use_cache = False
    num_params = sum(p.numel() for p in model.parameters())
    args = TrainingArguments(
        output_dir=str(work / f"run-{'b' if flatten else 'a'}"), per_device_train_batch_size=settings["ref_batch"],
        gradient_accumulation_steps=settings["ref_accum"], max_steps=settings["warmup"] + settings["steps"],
        learning_rate=2e-5, lr_scheduler_type="cosine", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0,
        bf16=cuda, use_cpu=not cuda, logging_strategy="no", save_strategy="no", report_to=[], seed=settings["seed"],
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    clock = StepClock()
    trainer = Trainer(model=model, args=args, train_dataset=Examples(), data_collator=counting_collator,
                      callbacks=[clock])
    trainer.train()
    accum = settings["ref_accum"]
    ends = [clock.begin] + clock.ends
    step_seconds = [b - a for a, b in zip(ends, ends[1:])]
    step_lengths = [sum(calls[k * accum:(k + 1) * accum], []) for k in range(len(step_seconds))]
    return {"step_lengths": step_lengths, "step_seconds": step_seconds, "peak_memory_gib": clock.peak,
            "parameters": num_params, "optimizer": str(getattr(args.optim, "value", args.optim)), "precision": "fp32 master + bf16 autocast" if cuda else "fp32"}


def _xllama_run(settings: dict) -> dict:
    """(c): xllama's own train() on a recipe built in code, in a run directory pre-seeded with the same data."""
    import torch

    from xllama.train.config import ModelConfig, Recipe, TrainConfig, validate
    from xllama.train.trainer import train

    work = Path(settings["work"])
    run = work / "run-c"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("data", "tokenizer", "store"):  # prepare_data() skips what exists: same examples as (a), (b)
        (run / name).symlink_to(work / name, target_is_directory=True)
    cuda = torch.cuda.is_available()
    recipe = validate(Recipe(
        name="bench-xllama", task="instruct",
        model=ModelConfig(init=dict(settings["shape"]), tokenizer=str(work / "tokenizer"),
                          attn_implementation=settings["attn"]),
        data={"path": str(work / "data")},
        train=TrainConfig(epochs=1, max_steps=settings["warmup"] + settings["steps"], learning_rate=2e-5,
                          lr_scheduler="cosine", warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0,
                          global_batch_size=settings["global_batch"], micro_batch_tokens=settings["micro_batch_tokens"],
                          max_length=settings["max_length"], precision="bf16" if cuda else "fp32", seed=settings["seed"],
                          save_every=0, log_every=1, compile=settings["compile"]),
    ), where="benchmark recipe")
    train(recipe, run)
    summary = json.loads((run / "summary.json").read_text())
    return {**_xllama_metrics(settings, run, cuda), "parameters": summary["parameters"], "status": summary["status"],
            "optimizer": "torch.optim.AdamW (fused on GPU)", "precision": recipe.train.precision if cuda else "fp32"}


def _xllama_metrics(settings: dict, run: Path, cuda: bool) -> dict:
    """Per-step figures from the run's metrics.jsonl; the example lengths are recomputed from the same plan."""
    from xllama.train.packing import plan_step

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    store = load_store(run.parent)
    step_lengths = []
    for r in records:
        plan = plan_step(r["step"] - 1, store, settings["global_batch"], settings["micro_batch_tokens"], 1,
                         settings["seed"])
        step_lengths.append([int(store.lengths[i]) for mbs in plan for mb in mbs for i in mb])
        assert sum(step_lengths[-1]) == r["tokens"], "plan and metrics disagree"
    return {"step_lengths": step_lengths, "step_seconds": [r["step_time_s"] for r in records],
            "peak_memory_gib": max((r.get("peak_memory_gib") or 0) for r in records) if cuda and records else None,
            "micro_batches": [r["micro_batches"] for r in records], "xllama_mfu": [r.get("mfu") for r in records]}


def xllama_partial(settings: dict, work: Path) -> dict | None:
    """After a time-out of (c): what its metrics.jsonl recorded (e.g. the final save ran past the limit)."""
    import torch

    from xllama.train.trainer import _peak_tflops

    run = work / "run-c"
    if not (run / "metrics.jsonl").is_file():
        return None
    cuda = torch.cuda.is_available()
    raw = _xllama_metrics(settings, run, cuda)
    if len(raw["step_seconds"]) <= settings["warmup"]:
        return None
    params = _num_params(settings["shape"], 49152)
    peak = _peak_tflops(torch.device("cuda")) if cuda else None
    peak = None if peak is None or math.isnan(peak) else peak
    summary = _summarise(raw.pop("step_lengths"), raw.pop("step_seconds"), settings["warmup"], params,
                         settings["shape"], peak)
    return {"config": "c", "method": CONFIGS["c"], "peak_tflops": peak, "parameters": params,
            "status": "timed out after its steps were logged", **raw, **summary}


def worker(name: str, settings_path: Path) -> int:
    """One configuration in its own process (clean GPU memory, allocator and accelerate state)."""
    import torch

    from xllama.train.trainer import _peak_tflops

    settings = json.loads(settings_path.read_text())
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    started = time.perf_counter()
    raw = _hf_trainer_run(settings, flatten=False) if name == "a" else \
        _hf_trainer_run(settings, flatten=True) if name == "b" else _xllama_run(settings)
    peak = _peak_tflops(torch.device("cuda")) if torch.cuda.is_available() else None
    peak = None if peak is None or math.isnan(peak) else peak  # a GPU missing from PEAK_TFLOPS: no MFU
    summary = _summarise(raw["step_lengths"], raw["step_seconds"], settings["warmup"], raw["parameters"],
                         settings["shape"], peak)
    if raw["peak_memory_gib"] is None:  # CPU: the worker process's peak resident set (model, optimiser, data)
        import resource

        raw["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        raw["peak_memory_kind"] = "peak RSS of the process"
    result = {"config": name, "method": CONFIGS[name], "peak_tflops": peak,
              "peak_memory_gib": raw["peak_memory_gib"], "wall_s": time.perf_counter() - started,
              **{k: v for k, v in raw.items() if k not in ("step_lengths", "step_seconds")}, **summary}
    atomic_write_json(Path(settings["work"]) / f"result-{name}.json", result)
    return 0


# --- the driver --------------------------------------------------------------------------------------------------

def machine() -> dict:
    import accelerate
    import torch
    import transformers

    cpu = cpu_name()
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    return info


def training_table(results: dict, settings: dict, mach: dict) -> str:
    hardware = mach.get("gpu") or f"{mach['cpu']} ({mach['cpu_cores']} cores, CPU only)"
    shape = settings["shape"]
    model = ("1.1B Llama shape" if shape == LLAMA_1B else
             f"Llama hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, MLP {shape['intermediate_size']}")
    memory = "peak GPU memory allocated" if mach.get("gpu") else "peak RSS of the worker process"
    lines = [
        f"{hardware}; torch {mach['torch']}, transformers {mach['transformers']}, accelerate {mach['accelerate']}, "
        f"flash-attn {mach['flash_attn'] or 'not installed'}; attention (a), (b) {settings['attn_hf']}, (c) "
        f"{settings['attn']}{' + train.compile' if settings.get('compile') else ''}; {model}, vocab 49,152, random "
        f"weights; {settings['warmup']} warm-up + {settings['steps']} timed optimiser steps each; memory: {memory}",
        "",
        "| configuration | examples/step | timed steps | real tokens/s | vs (a) | vs (b) | MFU | peak memory GiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = (results.get("a") or {}).get("tokens_per_s")
    flat = (results.get("b") or {}).get("tokens_per_s")
    for key, name in CONFIGS.items():
        r = results.get(key)
        per_step = (f"{settings['ref_batch']} x {settings['ref_accum']}" if key != "c" else
                    f"{settings['global_batch']} (≤{settings['micro_batch_tokens']:,} tokens/pass)")
        if not r or r.get("error"):
            lines.append(f"| ({key}) {name} | {per_step} | – | {(r or {}).get('error', 'not run')} | | | | |")
            continue
        tps = r["tokens_per_s"]
        if not tps:
            lines.append(f"| ({key}) {name} | {per_step} | 0 | no timed step finished (time limit) | | | | |")
            continue
        ratio = f"{tps / base:.2f}x" if base and tps else "–"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "n/a"
        vs_b = f"{tps / flat:.2f}x" if flat else "–"
        lines.append(f"| ({key}) {name} | {per_step} | {r['timed_steps']} | {tps:,.0f} | {ratio} | {vs_b} | {mfu} "
                     f"| {mem} |")
    c = (results.get("c") or {}).get("tokens_per_s")
    if c and base and flat:
        goals = [f"(c) / (a) = {c / base:.2f} (goal >= 1.6)", f"(c) / (b) = {c / flat:.2f} (goal >= 1.0)"]
        if mach.get("gpu"):
            goals.append(f"(c) {c:,.0f} real tokens/s (goal >= 38,000 on one H100/H200)")
            mem_b, mem_c = results["b"].get("peak_memory_gib"), results["c"].get("peak_memory_gib")
            if mem_b and mem_c:
                goals.append(f"peak memory (c) {mem_c:.1f} vs (b) {mem_b:.1f} GiB (goal: not higher)")
        lines += ["", "Goals: " + "; ".join(goals) + "."]
    return "\n".join(lines) + "\n"


def run_workers(settings: dict, work: Path, configs: list[str], deadline: float) -> dict:
    import torch

    results = {}
    settings_path = work / "settings.json"
    env = dict(os.environ)
    if "CUDA_VISIBLE_DEVICES" not in env and torch.cuda.device_count() > 1:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: a plain `python` Trainer would otherwise use DataParallel
    for k, name in enumerate(configs):
        budget = (deadline - time.time()) / (len(configs) - k)
        if budget < 10:
            results[name] = {"error": "skipped: --max-seconds reached"}
            continue
        settings["deadline"] = time.time() + budget * 0.9  # HF runs stop early themselves; then the hard timeout
        settings_path.write_text(json.dumps(settings))
        print(f"({name}) {CONFIGS[name]}: up to {budget:.0f}s", flush=True)
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--settings", str(settings_path)],
                                  timeout=budget, capture_output=True, text=True, env=env)
        except subprocess.TimeoutExpired:
            partial = xllama_partial(settings, work) if name == "c" else None
            results[name] = partial or {"error": f"timed out after {budget:.0f}s"}
            print(f"({name}) timed out{' (its logged steps are used)' if partial else ''}", flush=True)
            continue
        out = work / f"result-{name}.json"
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout)[-3000:]
            results[name] = {"error": f"failed (exit {proc.returncode})", "log_tail": tail}
            print(f"({name}) failed:\n{tail}", flush=True)
            continue
        results[name] = json.loads(out.read_text())
        r = results[name]
        print(f"({name}) {r['tokens_per_s'] or 0:,.0f} real tokens/s over {r['timed_steps']} steps "
              f"({time.perf_counter() - started:.0f}s in all)", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--padding-only", action="store_true", help="only the padding analysis (CPU, seconds)")
    parser.add_argument("--shared", help="the shared data folder (default: $XLLAMA_SHARED or ../shared)")
    parser.add_argument("--tokenizer", help="default: the shared SmolLM2 GGUF")
    parser.add_argument("--model", choices=("1.1b", "small", "tiny"),
                        help="default: 1.1b on a GPU, small (hidden 256, 4 layers) on a CPU")
    parser.add_argument("--configs", default="a,b,c", help="which configurations to train (default a,b,c)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps per configuration")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--ref-batch", type=int, default=4, help="(a), (b): per-device batch")
    parser.add_argument("--ref-accum", type=int, default=4, help="(a), (b): gradient accumulation")
    parser.add_argument("--global-batch", type=int,
                        help="(c): examples per step (default: the x-llama-7b recipe's, 128; 16 for CPU training)")
    parser.add_argument("--micro-batch-tokens", type=int,
                        help="(c): tokens per packed pass (default: the x-llama-7b recipe's, 16384; 2048 for CPU "
                             "training)")
    parser.add_argument("--compile", action="store_true", help="(c): train.compile (torch.compile each layer)")
    parser.add_argument("--attn-hf", help="(a), (b): attention implementation (default: flash_attention_2 when "
                                          "flash-attn is installed, else sdpa: what the x-LLM scripts get)")
    parser.add_argument("--attn", help="(c): attention implementation (default: xllama's choice, "
                                       "flash_attention_2 when flash-attn is installed, else sdpa)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, help="torch CPU threads in the workers")
    parser.add_argument("--max-seconds", type=float, default=540,
                        help="wall-clock bound for the whole run, data preparation included (default 540)")
    parser.add_argument("--work-dir", help="scratch directory (default: a temporary one, deleted at the end)")
    parser.add_argument("--out", default=str(HERE.parent.parent / "runs" / "benchmarks" / "training"),
                        help="where the .md and .json go (default runs/benchmarks/training, ignored by git)")
    parser.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        return worker(args.worker, Path(args.settings))

    import torch

    from xllama.train.config import load_recipe
    from xllama.train.attention import choose_attention

    deadline = time.time() + args.max_seconds
    cuda = torch.cuda.is_available()
    shared = Path(args.shared) if args.shared else shared_dir()
    tokenizer_spec = args.tokenizer or str(shared / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    model = args.model or ("1.1b" if cuda else "small")
    paper = load_recipe("x-llama-7b", languages=["zh"]).train  # the padding analysis uses the paper recipe's plan
    settings = {
        "shape": {"1.1b": LLAMA_1B, "small": LLAMA_SMALL, "tiny": LLAMA_TINY}[model],
        "warmup": args.warmup_steps, "steps": args.steps, "max_length": args.max_length, "seed": args.seed,
        "ref_batch": args.ref_batch, "ref_accum": args.ref_accum,
        "global_batch": args.global_batch or (paper.global_batch_size if cuda else 16),
        "micro_batch_tokens": args.micro_batch_tokens or (paper.micro_batch_tokens if cuda else 2048),
        "pad_global_batch": args.global_batch or paper.global_batch_size,
        "pad_micro_batch_tokens": args.micro_batch_tokens or paper.micro_batch_tokens,
        "attn": args.attn or choose_attention("auto", use_cpu=not cuda), "threads": args.threads,
        "attn_hf": args.attn_hf or ("flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"),
        "compile": args.compile,
    }
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be at least 1")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if any(c not in CONFIGS for c in configs):
        parser.error(f"--configs: choose from {', '.join(CONFIGS)}")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    settings["work"] = str(work)
    load_before = os.getloadavg()
    try:
        data_info = prepare_data(shared, tokenizer_spec, args.max_length, work)
        store = load_store(work)
        padding = padding_analysis(store, settings)
        results = {} if args.padding_only else run_workers(settings, work, configs, deadline)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    mach = {**machine(), "load_average_before": [round(x, 2) for x in load_before]}
    text = ["## Padding efficiency", "", padding_table(padding)]
    if results:
        text += ["## Training throughput", "", training_table(results, settings, mach)]
    text.append(f"Machine: {mach.get('gpu') or mach['cpu']}, {mach['cpu_cores']} CPU cores, load average "
                f"{load_before[0]:.1f} before / {mach['load_average'][0]:.1f} after; python {mach['python']}, "
                f"torch {mach['torch']}, transformers {mach['transformers']}.\n")
    table = "\n".join(text)
    print()
    print(table)
    out = Path(args.out)
    stem = "padding" if args.padding_only else f"train_{'cuda' if cuda else 'cpu'}"
    settings_out = {k: v for k, v in settings.items() if k not in ("work", "deadline")}
    atomic_write_json(out / f"{stem}.json", {"machine": mach, "settings": settings_out, "data": data_info,
                                             "padding": padding, "training": results})
    atomic_write_text(out / f"{stem}.md", table)
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
