"""The training loop: instruction tuning on packed rows, sharded by parallel.py (FSDP2 / DeepSpeed / one device).

Read it top to bottom: prepare the run directory and the token store (one process, before the process group
starts), build and shard the model (parallel.py), then for each optimiser step pack the step's examples, run
forward/backward per micro-batch, clip, step, log, checkpoint (checkpoint.py).

Loss: the sum of token cross-entropies over the step's target tokens divided by the number of target tokens in
the whole step (all micro-batches, all ranks), so every target token weighs the same whatever the packing, the
micro-batch count or the world size. The count is known in advance because every rank computes the same plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json, atomic_write_text, read_yaml
from xllama.train.config import Recipe, from_dict, validate
from xllama.train.attention import check_isolation, choose_attention
from xllama.train.loss import DEFAULT_CHUNK_TOKENS, causal_lm_loss
from xllama.train.packing import TokenStore, packed_row, plan_step, steps_per_epoch, total_steps

log = logging.getLogger(__name__)

# Dense bf16 peak of common accelerators, for MFU (TFLOP/s).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


@dataclass
class RunDir:
    """The layout of a run directory."""

    root: Path

    config = property(lambda self: self.root / "config.yaml")
    data = property(lambda self: self.root / "data")  # the text mix (datasets format) + manifest.json
    tokenized = property(lambda self: self.root / "tokenized")  # older runs only: converted into store/
    store = property(lambda self: self.root / "store")  # tokens.bin + offsets every rank memory-maps
    plan = property(lambda self: self.root / "plan.json")  # the effective parallel plan
    tokenizer = property(lambda self: self.root / "tokenizer")
    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    final = property(lambda self: self.root / "final")
    summary = property(lambda self: self.root / "summary.json")

    def latest_checkpoint(self) -> Path | None:
        from xllama.train.checkpoint import completed

        done = completed(self.checkpoints)
        return done[-1] if done else None


# --- devices -----------------------------------------------------------------------------------------------

def choose_device(recipe: Recipe) -> bool:
    """Return use_cpu. A GPU recipe on a machine without one is an error that names the CPU recipe."""
    import torch

    cuda = torch.cuda.is_available()
    wanted = recipe.train.device
    if wanted == "cuda" or recipe.train.requires_gpu:
        if not cuda:
            raise XllamaError(
                f"recipe {recipe.name!r} needs a CUDA GPU and none is available; the 'quickstart' recipe runs on "
                "a CPU: xllama train --recipe quickstart --lang zh"
            )
        return False
    return wanted == "cpu" or not cuda


# --- data --------------------------------------------------------------------------------------------------

def prepare_data(recipe: Recipe, run: RunDir) -> None:
    """One process: build the text mix, the tokenizer (if trained here) and the token store (RUN/store, which
    every rank memory-maps), once per run; each part is skipped when it exists. The task tokenises straight
    into the store, batch by batch; its stats go to RUN/store/stats.json."""
    from datasets import load_from_disk

    from xllama.modeling import build_bpe_tokenizer, load_tokenizer
    from xllama.train.data import task_module
    from xllama.train.store import StoreWriter

    task = task_module(recipe.task)
    if not run.data.is_dir():
        from xllama.data.mix import write_mix

        dataset, manifest = task.load_text(recipe)
        write_mix(dataset, manifest, run.data)
    text = load_from_disk(str(run.data))
    if not run.tokenizer.is_dir():
        spec = recipe.model.tokenizer or recipe.model.name_or_path
        if spec == "bpe":
            tokenizer = build_bpe_tokenizer(task.texts(text), recipe.model.tokenizer_vocab_size)
        else:
            tokenizer = load_tokenizer(spec)
        with atomic_directory(run.tokenizer, overwrite=True) as tmp:
            tokenizer.save_pretrained(tmp)
    if run.store.is_dir():
        return
    if run.tokenized.is_dir():  # a run directory from before the store (RUN/tokenized): convert it once
        _store_from_tokenized(run)
        return
    tokenizer = load_tokenizer(str(run.tokenizer))
    with StoreWriter(run.store, len(tokenizer), desc="tokenising") as writer:
        writer.stats = task.tokenize(text, tokenizer, recipe, writer)
        if writer.examples == 0:
            raise XllamaError(f"task {recipe.task!r} wrote no training examples from {run.data} ({writer.stats})")
    log.info("token store %s: %s (%s)", run.store, writer.meta, writer.stats)


def _store_from_tokenized(run: RunDir) -> None:
    """RUN/tokenized (the tokenised ``datasets`` set older versions kept) -> RUN/store, with its stats."""
    from datasets import load_from_disk

    from xllama.modeling import load_tokenizer
    from xllama.train.store import write_store

    stats_file = run.tokenized / "stats.json"
    stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.is_file() else None
    meta = write_store(load_from_disk(str(run.tokenized)), run.store, len(load_tokenizer(str(run.tokenizer))),
                       stats=stats)
    log.warning("%s: built the token store %s from the tokenised set of an older xllama (%d examples, %d tokens); "
                "%s is no longer used and may be deleted", run.root, run.store, meta["examples"], meta["tokens"],
                run.tokenized)


def data_stats(run: RunDir) -> dict:
    """The task's tokenisation stats of a prepared run (RUN/store/stats.json; RUN/tokenized/stats.json in a run
    directory from before the store)."""
    for path in (run.store / "stats.json", run.tokenized / "stats.json"):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise XllamaError(f"{run.root}: no tokenisation stats ({run.store / 'stats.json'}); prepare the data first")


# --- model -------------------------------------------------------------------------------------------------

def build_model(recipe: Recipe, tokenizer, use_cpu: bool, meta: bool = False):
    """The model to train; ``meta=True``: the same architecture without reading weights (call it under
    ``torch.device("meta")``: the ranks that receive their shards from rank 0, see parallel.py)."""
    import torch

    from xllama.modeling import build_model_from_config, load_model

    attn = choose_attention(recipe.model.attn_implementation, use_cpu)
    if recipe.model.init is not None:
        config = dict(recipe.model.init, attn_implementation=attn)
        model = build_model_from_config(config, vocab_size=len(tokenizer), seed=recipe.train.seed)
    else:
        model = (_from_config(recipe.model.name_or_path, attn) if meta else
                 load_model(recipe.model.name_or_path, dtype="float32", attn_implementation=attn))
    model.config.use_cache = False
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and recipe.train.max_length > limit:
        raise XllamaError(
            f"train.max_length {recipe.train.max_length} exceeds the model's maximum sequence length {limit} "
            "(max_position_embeddings)"
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise XllamaError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has only "
                          f"{model.get_input_embeddings().weight.shape[0]} rows")
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.train.compile:
        compile_layers(model)
    if recipe.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        torch.manual_seed(recipe.train.seed)  # the adapter's random init: a function of the seed, run to run
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    torch.manual_seed(recipe.train.seed)
    return model


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (parameter names unchanged); returns how many were compiled."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise XllamaError(f"train.compile: no decoder layers found in {type(model).__name__} "
                          "(its _no_split_modules is empty); set train.compile: false")
    for layer in layers:
        layer.compile()
    return len(layers)


def _from_config(spec: str, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from xllama.modeling import resolve_model

    source = resolve_model(spec)
    config = AutoConfig.from_pretrained(source.path, **source.kwargs)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def build_optimizer(model, recipe: Recipe, use_cpu: bool):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    t = recipe.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), fused=not use_cpu)


def flops_per_step(num_params: int, config, lengths) -> float:
    """Training FLOPs: 6 per parameter per token, plus causal attention 6 * layers * hidden * n^2 per example."""
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    tokens = sum(lengths)
    return 6.0 * num_params * tokens + 6.0 * layers * hidden * sum(n * n for n in lengths)


# --- the objective -----------------------------------------------------------------------------------------

class TokenCrossEntropy:
    """The default objective: the sum of token cross-entropies over the step's target tokens divided by the
    number of target tokens in the whole step, so every target token weighs the same.

    An objective is ``step_totals(store, examples) -> dict`` (normalisers over the whole step, every rank computes
    the same), ``__call__(model, row, totals) -> (loss, sums)`` (this micro-batch's share of the step's loss; sums
    are detached scalars added over micro-batches and ranks) and ``metrics(sums, totals) -> dict`` (logged, "loss"
    first). A task module may provide ``objective(recipe)`` (CPO: :mod:`xllama.alma.cpo`).
    """

    def step_totals(self, store: TokenStore, examples) -> dict:
        return {"target_tokens": int(store.target_counts[examples].sum())}

    def __init__(self, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.chunk_tokens = chunk_tokens

    def __call__(self, model, row: dict, totals: dict):
        token_loss = causal_lm_loss(model, row, self.chunk_tokens)  # chunked: never the whole fp32 logits
        return token_loss / max(totals["target_tokens"], 1), {"loss": token_loss.detach()}

    def metrics(self, sums: dict, totals: dict) -> dict:
        return {"loss": sums["loss"] / max(totals["target_tokens"], 1)}


def task_objective(recipe: Recipe):
    """The recipe task's objective (its module's ``objective(recipe)``), else token cross-entropy."""
    from xllama.train.data import task_module

    make = getattr(task_module(recipe.task), "objective", None)
    return make(recipe) if make is not None else TokenCrossEntropy(recipe.train.loss_chunk_tokens)


# --- checkpoints -------------------------------------------------------------------------------------------

def save_final(accelerator, model, tokenizer, recipe: Recipe, run: RunDir) -> None:
    """Save a standard Hugging Face checkpoint (from_pretrained loads it), whatever the sharding was."""
    from xllama.modeling import align_with_tokenizer
    from xllama.train.parallel import full_state_dict

    state = full_state_dict(accelerator, model)  # full weights on the main process under FSDP2/ZeRO-3
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    dtype = save_dtype(recipe)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    unwrapped = accelerator.unwrap_model(model)
    align_with_tokenizer(unwrapped, tokenizer)  # plain transformers loads, generates and stops like xllama
    with atomic_directory(run.final, overwrite=True) as tmp:
        if recipe.lora.enabled:
            unwrapped.save_pretrained(tmp / "adapter", state_dict=state, safe_serialization=True)
            if recipe.lora.merge:
                merged = _merged_copy(recipe, tokenizer, state)
                merged.to(dtype).save_pretrained(tmp, safe_serialization=True)
        else:
            unwrapped.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        _record_dtype(tmp / "config.json", dtype)
        tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def save_dtype(recipe: Recipe):
    """The dtype of RUN/final: train.save_dtype, or ('auto') the base model's (its config's torch_dtype;
    float32 for a model built from a config or a checkpoint that names none)."""
    import torch

    name = recipe.train.save_dtype
    if name == "auto":
        name = "float32"
        if recipe.model.name_or_path is not None:
            from transformers import AutoConfig

            from xllama.modeling import resolve_model

            source = resolve_model(recipe.model.name_or_path)
            config = AutoConfig.from_pretrained(source.path, **source.kwargs)
            found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            name = str(found).removeprefix("torch.") if found is not None else name
    return getattr(torch, name)


def _record_dtype(config_json: Path, dtype) -> None:
    """save_pretrained writes the dtype of the training weights (fp32); record the dtype actually saved."""
    if config_json.is_file():
        config = json.loads(config_json.read_text(encoding="utf-8"))
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "torch_dtype":
                config[key] = str(dtype).removeprefix("torch.")
        atomic_write_text(config_json, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _merged_copy(recipe: Recipe, tokenizer, state):
    """The LoRA model merged into its base, from the gathered full state: a fresh unsharded copy is built on the
    CPU (the trained, possibly FSDP-sharded model itself cannot be copied), given the state, then merged."""
    plain = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, compile=False,
                                                                  gradient_checkpointing=False))
    clone = build_model(plain, tokenizer, use_cpu=True)
    clone.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=False)
    return clone.merge_and_unload()


# --- the loop ----------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGTERM/SIGINT: the loop finishes the current step, checkpoints and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(recipe: Recipe, run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None,
          overrides: list[str] = ()) -> dict:
    """Run (or resume) training; returns a summary dict. ``stop_after`` simulates an interruption (tests).
    ``overrides``: the command line's KEY=VALUE settings, checked against the saved config on resume."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from xllama.modeling import load_tokenizer
    from xllama.train import checkpoint as ckpt
    from xllama.train.parallel import autocast, build_and_shard, clip_grad_norm_, configure_deepspeed, row_seed
    from xllama.train.store import open_store, prepare_once

    run = RunDir(Path(run_dir))
    choose_device(recipe)  # fail before anything is written when the machine cannot run this recipe
    recipe = _settle_config(recipe, run, resume, overrides)
    if resume and (done := _finished_summary(run, recipe)) is not None:
        log.info("%s is already complete (%d of %d steps): nothing to resume", run.root, done["steps"],
                 done["total_steps"])
        return done
    use_cpu = choose_device(recipe)
    t = recipe.train
    # Data first, before the process group exists: one process prepares, the others wait on the file system.
    prepare_once(lambda: prepare_data(recipe, run), run.store, int(os.environ.get("RANK", "0")))
    accelerator = _accelerator(recipe, run, use_cpu)  # device, process group, DeepSpeed, trackers
    tokenizer = load_tokenizer(str(run.tokenizer))
    store = open_store(run.store)  # memory-mapped

    attn = choose_attention(recipe.model.attn_implementation, use_cpu)
    model, layout = build_and_shard(lambda meta: build_model(recipe, tokenizer, use_cpu, meta), recipe, accelerator,
                                  attn)
    # a tiny copy of this architecture on this attention path: packed examples must not see each other
    check_isolation(_config(model), attn, accelerator.device)
    objective = task_objective(recipe)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, recipe, use_cpu or t.cpu_offload)
    steps = total_steps(len(store), t.global_batch_size, t.epochs)
    last_step = min(steps, t.max_steps) if t.max_steps else steps
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * steps),
                              num_training_steps=steps)
    if layout.engine == "deepspeed":
        configure_deepspeed(accelerator, recipe)
        model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped by us, once per step
    if accelerator.is_main_process:
        log.info("%s", layout.describe())
        atomic_write_json(run.plan, layout.to_dict())

    start = 0
    checkpoint = run.latest_checkpoint() if resume else None
    if checkpoint is not None:
        start = ckpt.load(accelerator, checkpoint, model, optimizer, scheduler, layout.engine)
        log.info("resumed from %s at step %d", checkpoint, start)
    if accelerator.is_main_process:
        _truncate_metrics(run.metrics, start)

    deepspeed = layout.engine == "deepspeed"
    world, rank = accelerator.num_processes, accelerator.process_index
    device = accelerator.device
    lengths, targets = store.lengths, store.target_counts
    peak = _peak_tflops(device) * world if not use_cpu else None
    bar = tqdm(total=last_step, initial=start, desc="training", unit="step", disable=not accelerator.is_main_process,
               dynamic_ncols=True)
    status, step = "completed", start - 1
    began = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _StopFlag() as stop:
        for step in range(start, last_step):
            tick = time.perf_counter()
            plan = plan_step(step, store, t.global_batch_size, t.micro_batch_tokens, world, t.seed)
            step_examples = [i for rank_mbs in plan for mb in rank_mbs for i in mb]
            step_targets = int(targets[step_examples].sum())
            totals = objective.step_totals(store, step_examples)  # the loss's normalisers: whole step, all ranks
            model.train()
            sums: dict = {}
            micro_batches = plan[rank]
            for j, mb in enumerate(micro_batches):
                row = {k: torch.from_numpy(v).to(device) for k, v in packed_row(store, mb, tokenizer.pad_token_id).items()}
                sync = j == len(micro_batches) - 1
                if deepspeed:  # DeepSpeed steps inside backward: tell it which micro-batch ends the step
                    model.set_gradient_accumulation_boundary(sync)
                    accelerator.gradient_state._set_sync_gradients(sync)
                torch.manual_seed(row_seed(t.seed, step, mb))  # dropout: a function of the row, not of the rank
                with autocast(layout):
                    loss, parts = objective(model, row, totals)
                accelerator.backward(loss * world)  # FSDP2/DeepSpeed average over ranks: * world makes it a sum
                for k, v in parts.items():
                    sums[k] = sums[k] + v if k in sums else v
            grad_norm = (accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm) if deepspeed
                         else clip_grad_norm_(model.parameters(), t.max_grad_norm))
            lr = scheduler.get_last_lr()[0]  # the rate this step's update used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            names = sorted(sums)
            reduced = accelerator.reduce(torch.stack([sums[k].float() for k in names]), reduction="sum").tolist()
            step_metrics = objective.metrics(dict(zip(names, reduced)), totals)
            stop_now = stop.requested or (stop_after is not None and step + 1 >= stop_after)
            stop_now = bool(accelerator.reduce(torch.tensor(float(stop_now), device=device), reduction="sum") > 0)
            elapsed = time.perf_counter() - tick
            step_lengths = [int(lengths[i]) for i in step_examples]
            record = {
                "step": step + 1,
                "epoch": round((step + 1) / steps_per_epoch(len(store), t.global_batch_size), 4),
                **step_metrics,  # "loss" first, then what the objective adds (CPO: preference accuracy, margin)
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "examples": len(step_examples),
                "tokens": sum(step_lengths),
                "target_tokens": step_targets,
                "micro_batches": len(micro_batches),
                "tokens_per_s": sum(step_lengths) / elapsed,
                "step_time_s": elapsed,
            }
            if peak:
                record["mfu"] = flops_per_step(num_params, _config(model), step_lengths) / elapsed / (peak * 1e12)
            if device.type == "cuda":
                record["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            if accelerator.is_main_process and ((step + 1) % t.log_every == 0 or step + 1 == last_step):
                with open(run.metrics, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if t.report_to:  # the same record to tensorboard / wandb / mlflow
                    accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step + 1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            if stop_now or (t.save_every and (step + 1) % t.save_every == 0 and step + 1 < last_step):
                ckpt.save(accelerator, run.checkpoints, step + 1, model, optimizer, scheduler, layout.engine,
                          t.keep_checkpoints)
            if stop_now and step + 1 < last_step:
                status = "interrupted"
                log.warning("stopped at step %d of %d; continue with --resume", step + 1, last_step)
                break
    bar.close()
    if t.report_to:
        accelerator.end_training()
    if status == "completed":
        save_final(accelerator, model, tokenizer, recipe, run)
    summary = {
        "status": status,
        "steps": last_step if status == "completed" else step + 1,
        "total_steps": steps,
        "examples": len(store),
        "parameters": num_params,
        "world_size": world,
        "wall_time_s": time.perf_counter() - began,
        "final_model": str(run.final) if status == "completed" else None,
    }
    if accelerator.is_main_process:
        atomic_write_json(run.summary, summary)
    return summary


def _accelerator(recipe: Recipe, run: RunDir, use_cpu: bool):
    """accelerate gives the device, the process group (from the launcher's environment), DeepSpeed and the
    experiment trackers; the model's sharding is parallel.py's (an accelerate FSDP config is not used)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t = recipe.train
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        log.warning("the accelerate config's FSDP section is not used: xllama shards the model itself "
                    "(xllama/train/parallel.py) from the recipe's train.* keys")
    mixed = "bf16" if deepspeed and t.precision == "bf16" and not use_cpu else "no"  # DeepSpeed casts by config
    for tracker in t.report_to:
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[tracker]
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise XllamaError(f"train.report_to lists {tracker!r} but it is not installed: pip install {module}")
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed, log_with=list(t.report_to) or None,
                              project_config=ProjectConfiguration(project_dir=str(run.root),
                                                                  logging_dir=str(run.root / "logs")))
    if t.report_to:
        accelerator.init_trackers(run.root.name, config=_flat(recipe.to_dict()))
    return accelerator


def _flat(tree: dict, prefix: str = "") -> dict:
    """{'train': {'seed': 1}} -> {'train.seed': 1}: trackers take flat scalars (others become strings)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _config(model):
    inner = model
    while hasattr(inner, "module"):
        inner = inner.module
    return getattr(inner, "config", None)


def _peak_tflops(device) -> float:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint so the curve stays one continuous run."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln)["step"] <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _settle_config(recipe: Recipe, run: RunDir, resume: bool, overrides: list[str] = ()) -> Recipe:
    """A new run writes config.yaml; a resumed run trains on exactly the config it started with, except
    ``train.max_steps`` (safe: the schedule follows ``epochs``), which a resume applies and records. Any other
    KEY=VALUE given with --resume that differs from the run's config is an error naming it."""
    if resume:
        if not run.config.is_file():
            raise XllamaError(f"cannot resume: {run.config} not found (no run was started in {run.root})")
        saved = read_yaml(run.config)
        settled = validate(from_dict(Recipe, saved, where=str(run.config)), where=str(run.config))
        return _apply_on_resume(settled, overrides, run)
    if run.latest_checkpoint() is not None or run.final.exists():
        raise XllamaError(f"run directory {run.root} already holds a run: pass --resume to continue it, "
                          "or choose another --out")
    if _is_main():
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    return recipe


def _apply_on_resume(recipe: Recipe, overrides: list[str], run: RunDir) -> Recipe:
    from xllama.train.config import parse_override

    ignored = []
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["train", "max_steps"]:
            if recipe.train.max_steps != value:
                log.warning("--resume: train.max_steps %s -> %s (applied)", recipe.train.max_steps, value)
                recipe.train.max_steps = value
            continue
        current = recipe.to_dict()
        for k in keys:
            current = current.get(k) if isinstance(current, dict) else None
        if current != value:
            ignored.append(f"{'.'.join(keys)} (the run has {current!r}, given {value!r})")
    if ignored:
        raise XllamaError(f"--resume continues {run.root} with its own config ({run.config}); these settings differ "
                          f"and would be ignored: {'; '.join(ignored)}. Only train.max_steps (--max-steps) may "
                          "change on resume; start a new run (--out) to change the others")
    validate(recipe, str(run.config))
    if _is_main():
        atomic_write_text(run.config, yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    return recipe


def _finished_summary(run: RunDir, recipe: Recipe) -> dict | None:
    """The saved summary of a run that has trained every step ``recipe`` asks for (its final model written),
    else None. Resuming such a run must leave it as it is (summary.json's wall time included)."""
    if not (run.summary.is_file() and run.final.is_dir()):
        return None
    summary = json.loads(run.summary.read_text(encoding="utf-8"))
    target = summary.get("total_steps", 0)
    if recipe.train.max_steps is not None:
        target = min(target, recipe.train.max_steps)
    return summary if summary.get("status") == "completed" and summary.get("steps", 0) >= target else None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
