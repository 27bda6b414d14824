"""The training loop: instruction tuning on packed rows, sharded by accelerate (FSDP / DeepSpeed / single device).

Read it top to bottom: prepare the run directory and data (main process), load the model, then for each
optimiser step pack the step's examples, run forward/backward per micro-batch, clip, step, log, checkpoint.

Loss: the sum of token cross-entropies over the step's target tokens divided by the number of target tokens in
the whole step (all micro-batches, all ranks), so every target token weighs the same whatever the packing, the
micro-batch count or the world size. The count is known in advance because every rank computes the same plan.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json, atomic_write_text
from xllama.train.config import Recipe, from_dict, validate
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
    tokenized = property(lambda self: self.root / "tokenized")
    tokenizer = property(lambda self: self.root / "tokenizer")
    checkpoints = property(lambda self: self.root / "checkpoints")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    final = property(lambda self: self.root / "final")
    summary = property(lambda self: self.root / "summary.json")

    def latest_checkpoint(self) -> Path | None:
        done = [p for p in self.checkpoints.glob("step-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


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


def attention_implementation(requested: str, use_cpu: bool) -> str:
    """The fastest attention path that handles packed rows on this machine."""
    if requested != "auto":
        return requested
    if not use_cpu:
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"  # packed rows get a block-diagonal mask from transformers' masking utilities
    return "sdpa"


# --- data --------------------------------------------------------------------------------------------------

def prepare_data(recipe: Recipe, run: RunDir) -> None:
    """Main process: build the text mix, the tokenizer (if trained here) and the tokenised set, once per run."""
    from datasets import load_from_disk

    from xllama.modeling import build_bpe_tokenizer, load_tokenizer
    from xllama.train.data import task_module

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
    if not run.tokenized.is_dir():
        tokenizer = load_tokenizer(str(run.tokenizer))
        tokenized, stats = task.tokenize(text, tokenizer, recipe)
        with atomic_directory(run.tokenized, overwrite=True) as tmp:
            tokenized.save_to_disk(str(tmp))
            atomic_write_json(tmp / "stats.json", stats)
        log.info("tokenised %d examples (%s)", len(tokenized), stats)


# --- model -------------------------------------------------------------------------------------------------

def build_model(recipe: Recipe, tokenizer, use_cpu: bool):
    import torch

    from xllama.modeling import build_model_from_config, load_model

    attn = attention_implementation(recipe.model.attn_implementation, use_cpu)
    if recipe.model.init is not None:
        config = dict(recipe.model.init, attn_implementation=attn)
        model = build_model_from_config(config, vocab_size=len(tokenizer), seed=recipe.train.seed)
    else:
        model = load_model(recipe.model.name_or_path, dtype="float32", attn_implementation=attn)
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
    if recipe.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    torch.manual_seed(recipe.train.seed)
    return model


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


# --- checkpoints -------------------------------------------------------------------------------------------

def save_checkpoint(accelerator, run: RunDir, step: int, scheduler, keep: int) -> None:
    """Write checkpoints/step-N atomically: everything goes to a temporary directory that is renamed last."""
    final = run.checkpoints / f"step-{step}"
    tmp = run.checkpoints / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "scheduler": scheduler.state_dict()})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(run.checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_final(accelerator, model, tokenizer, recipe: Recipe, run: RunDir) -> None:
    """Save a standard Hugging Face checkpoint (from_pretrained loads it), whatever the sharding was."""
    state = accelerator.get_state_dict(model)  # gathers full weights on the main process under FSDP/ZeRO-3
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    unwrapped = accelerator.unwrap_model(model)
    with atomic_directory(run.final, overwrite=True) as tmp:
        if recipe.lora.enabled:
            unwrapped.save_pretrained(tmp / "adapter", state_dict=state, safe_serialization=True)
            if recipe.lora.merge:
                merged = _merged_copy(unwrapped, state)
                merged.save_pretrained(tmp, safe_serialization=True)
        else:
            unwrapped.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        unwrapped_config = getattr(unwrapped, "generation_config", None)
        if unwrapped_config is not None and tokenizer.eos_token_id is not None:
            unwrapped_config.eos_token_id = tokenizer.eos_token_id
            unwrapped_config.pad_token_id = tokenizer.pad_token_id
            unwrapped_config.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def _merged_copy(peft_model, state):
    """Merge LoRA weights into the base model using the gathered full state (works after FSDP too)."""
    import copy

    clone = copy.deepcopy(peft_model).cpu()
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


def train(recipe: Recipe, run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns a summary dict. ``stop_after`` simulates an interruption (tests)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from datasets import load_from_disk
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from xllama.modeling import load_tokenizer

    run = RunDir(Path(run_dir))
    choose_device(recipe)  # fail before anything is written when the machine cannot run this recipe
    recipe = _settle_config(recipe, run, resume)
    use_cpu = choose_device(recipe)
    t = recipe.train
    mixed = "bf16" if t.precision == "bf16" and not use_cpu else "no"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
    if use_cpu and t.precision == "bf16":
        log.info("CPU run: training in fp32 (bf16 autocast is a GPU setting)")

    if accelerator.is_main_process:
        prepare_data(recipe, run)
    accelerator.wait_for_everyone()
    tokenizer = load_tokenizer(str(run.tokenizer))
    store = TokenStore.from_dataset(load_from_disk(str(run.tokenized)))

    model = build_model(recipe, tokenizer, use_cpu)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, recipe, use_cpu)
    steps = total_steps(len(store), t.global_batch_size, t.epochs)
    last_step = min(steps, t.max_steps) if t.max_steps else steps
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * steps),
                              num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is stepped by us, once per step

    start = 0
    checkpoint = run.latest_checkpoint() if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        log.info("resumed from %s at step %d", checkpoint, start)
    if accelerator.is_main_process:
        _truncate_metrics(run.metrics, start)

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
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
            model.train()
            loss_sum = torch.zeros((), device=device)
            micro_batches = plan[rank]
            for j, mb in enumerate(micro_batches):
                row = {k: torch.from_numpy(v).to(device) for k, v in packed_row(store, mb, tokenizer.pad_token_id).items()}
                sync = j == len(micro_batches) - 1
                if deepspeed:  # DeepSpeed steps inside backward: tell it which micro-batch ends the step
                    model.set_gradient_accumulation_boundary(sync)
                    accelerator.gradient_state._set_sync_gradients(sync)
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    logits = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits
                    token_loss = F.cross_entropy(logits.float().flatten(0, 1), row["labels"].flatten(),
                                                 ignore_index=-100, reduction="sum")
                    accelerator.backward(token_loss * world / max(step_targets, 1))
                loss_sum += token_loss.detach()
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_sum = accelerator.reduce(loss_sum, reduction="sum")
            stop_now = stop.requested or (stop_after is not None and step + 1 >= stop_after)
            stop_now = bool(accelerator.reduce(torch.tensor(float(stop_now), device=device), reduction="sum") > 0)
            elapsed = time.perf_counter() - tick
            step_lengths = [int(lengths[i]) for i in step_examples]
            record = {
                "step": step + 1,
                "epoch": round((step + 1) / steps_per_epoch(len(store), t.global_batch_size), 4),
                "loss": loss_sum.item() / max(step_targets, 1),
                "lr": scheduler.get_last_lr()[0],
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
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            if stop_now or (t.save_every and (step + 1) % t.save_every == 0 and step + 1 < last_step):
                save_checkpoint(accelerator, run, step + 1, scheduler, t.keep_checkpoints)
            if stop_now and step + 1 < last_step:
                status = "interrupted"
                log.warning("stopped at step %d of %d; continue with --resume", step + 1, last_step)
                break
    bar.close()
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


def _settle_config(recipe: Recipe, run: RunDir, resume: bool) -> Recipe:
    """A new run writes config.yaml; a resumed run trains on exactly the config it started with."""
    if resume:
        if not run.config.is_file():
            raise XllamaError(f"cannot resume: {run.config} not found (no run was started in {run.root})")
        saved = yaml.safe_load(run.config.read_text(encoding="utf-8"))
        return validate(from_dict(Recipe, saved, where=str(run.config)), where=str(run.config))
    if run.latest_checkpoint() is not None or run.final.exists():
        raise XllamaError(f"run directory {run.root} already holds a run: pass --resume to continue it, "
                          "or choose another --out")
    if _is_main():
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    return recipe


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
