"""ALMA stage 2 with the best checkpoint chosen by validation loss.

The training engine has no evaluation hook, so this driver wraps its public API: it trains with a checkpoint at
every epoch boundary (``train.save_every`` = steps per epoch), then scores each epoch's checkpoint and the final
model on the validation pairs stored in the run's data (``data.valid`` of the recipe), and keeps the best as
``<out>/best``: a symlink to ``final`` when the last epoch wins, else that checkpoint exported the way the
trainer exports ``final`` (Hugging Face format; for LoRA the adapter plus a merged copy). ``validation.json``
records every candidate's loss, overall and per direction.

This module is the ``alma-parallel`` task of the trainer's registry (``xllama.train.data.TASK_MODULES``): it
provides ALMA's data functions (from :mod:`xllama.alma.data`) and :func:`train`, which `xllama train` runs for the
task: train then select for a recipe with validation data, else the plain trainer. E.g.
  xllama train --recipe alma-quickstart-stage2 --model runs/alma-stage1/final --out runs/alma-stage2
  accelerate launch --config_file recipes/accelerate/fsdp.yaml -m xllama train --recipe alma-7b-stage2 \\
      --out runs/alma-7b-stage2
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

from xllama.alma.data import load_text, texts, tokenize  # noqa: F401  (the alma-parallel task's data side)
from xllama.errors import XllamaError

log = logging.getLogger(__name__)

VALIDATION = "validation.json"
BEST = "best"


def train(recipe, run_dir, resume: bool = False, overrides=()) -> dict:
    """What `xllama train` runs for a stage-2 recipe: with validation pairs (``data.valid``), train and keep the
    best epoch (:func:`train_and_select`); without, the trainer alone."""
    if recipe.data.get("valid"):
        return train_and_select(recipe, run_dir, resume=resume)
    from xllama.train.trainer import train as train_only

    return train_only(recipe, run_dir, resume=resume, overrides=overrides)


def with_epoch_checkpoints(recipe, steps_per_epoch: int):
    """The recipe with a checkpoint at every epoch boundary, and enough of them kept (plus one for an
    interruption checkpoint) that none is deleted before it is scored."""
    epochs = math.ceil(recipe.train.epochs)
    train = dataclasses.replace(recipe.train, save_every=steps_per_epoch,
                                keep_checkpoints=max(recipe.train.keep_checkpoints, epochs + 1))
    return dataclasses.replace(recipe, train=train)


def _saved_recipe(run):
    from xllama.io import read_yaml
    from xllama.train.config import Recipe, from_dict, validate

    if not run.config.is_file():
        raise XllamaError(f"{run.config} not found: no run was started in {run.root}")
    saved = read_yaml(run.config)
    return validate(from_dict(Recipe, saved, where=str(run.config)), where=str(run.config))


def _check_recipe(recipe) -> None:
    from xllama.alma.data import PARALLEL, parse_spec

    if recipe.task != PARALLEL:
        raise XllamaError(f"recipe {recipe.name!r} has task {recipe.task!r}; checkpoint selection is for "
                          f"{PARALLEL} (stage 2). Train stage 1 with `xllama train`.")
    if not parse_spec(recipe).valid:
        raise XllamaError(f"recipe {recipe.name!r}: data.valid is empty; checkpoint selection needs validation "
                          "pairs, e.g. valid: {de-en: ../shared/data/parallel/alma-human-written/deen/valid.de-en.json}")


def train_and_select(recipe, run_dir, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train stage 2 (or resume it), then select the best checkpoint by validation loss. Returns the trainer's
    summary plus ``best_model`` and ``validation`` (the candidates' losses)."""
    from accelerate import PartialState

    from xllama.train.packing import steps_per_epoch
    from xllama.train.store import open_store
    from xllama.train.trainer import RunDir, prepare_data, train

    run = RunDir(Path(run_dir))
    if resume:
        recipe = _saved_recipe(run)
    _check_recipe(recipe)
    state = PartialState()
    if state.is_main_process:  # the data first: its size fixes the epoch length (the trainer reuses it)
        run.root.mkdir(parents=True, exist_ok=True)
        prepare_data(recipe, run)  # nothing to do when the store exists (an older run's is built here)
    state.wait_for_everyone()
    if resume and run.summary.is_file() and json.loads(run.summary.read_text())["status"] == "completed":
        log.info("%s: training already completed; selecting the best checkpoint", run.root)
        summary = json.loads(run.summary.read_text())
    else:
        per_epoch = steps_per_epoch(len(open_store(run.store)), recipe.train.global_batch_size)
        if not resume:
            recipe = with_epoch_checkpoints(recipe, per_epoch)
        summary = train(recipe, run.root, resume=resume, stop_after=stop_after)
        if summary["status"] != "completed":
            return summary
    selection = select_best(run)
    return {**summary, "best_model": selection["best_model"], "validation": selection}


def select_best(run) -> dict:
    """Score every epoch checkpoint and the final model of a finished run; write ``validation.json`` and
    ``best``. Every rank takes part (sharded models need all of them); the main process writes."""
    import torch
    from accelerate import Accelerator

    from xllama.alma.validate import validation_loss, validation_set
    from xllama.io import atomic_write_json
    from xllama.modeling import load_tokenizer
    from xllama.train import checkpoint as ckpt
    from xllama.train.attention import choose_attention
    from xllama.train.packing import steps_per_epoch
    from xllama.train.parallel import build_and_shard
    from xllama.train.store import open_store
    from xllama.train.trainer import choose_device, save_final

    recipe = _saved_recipe(run)
    summary = json.loads(run.summary.read_text())
    if summary["status"] != "completed" or not run.final.is_dir():
        raise XllamaError(f"{run.root}: training has not completed; finish it with --resume first")
    final_step = int(summary["steps"])
    per_epoch = steps_per_epoch(len(open_store(run.store)), recipe.train.global_batch_size)
    use_cpu = choose_device(recipe)
    mixed = "bf16" if recipe.train.precision == "bf16" and not use_cpu else "no"
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed)
    tokenizer = load_tokenizer(str(run.tokenizer))
    valid, valid_stats = validation_set(run.data, tokenizer, recipe.train.max_length)

    candidates = []
    for path in run.checkpoints.glob("step-*"):
        step = int(path.name.split("-")[1])
        if step % per_epoch == 0 and step < final_step and (path / "trainer_state.json").is_file():
            candidates.append((path.name, step, path))
    candidates.sort(key=lambda c: c[1])
    candidates.append(("final", final_step, run.final))

    attn = choose_attention(recipe.model.attn_implementation, use_cpu)

    def load(path: Path, final: bool):
        """The candidate built and sharded as the trainer does it, with its weights."""
        model, layout = build_and_shard(lambda meta: _candidate_model(recipe, tokenizer, use_cpu, path, final, meta),
                                        recipe, accelerator, attn)
        if layout.engine == "deepspeed":
            model = accelerator.prepare(model)
        if not final:
            ckpt.load_weights(accelerator, path, model, layout.engine)
        return model

    results = []
    for name, step, path in candidates:
        model = load(path, final=name == "final")
        scores = validation_loss(model, valid, tokenizer.pad_token_id, batch_tokens=recipe.train.micro_batch_tokens,
                                 device=accelerator.device, progress=accelerator.is_main_process,
                                 desc=f"validating {name}")
        results.append({"name": name, "step": step, "epoch": round(step / per_epoch, 4), "path": str(path), **scores})
        log.info("%s (epoch %.2f): validation loss %.4f", name, step / per_epoch, scores["loss"])
        del model
        accelerator.free_memory()

    best = min(results, key=lambda r: (r["loss"], -r["step"]))
    target = run.root / BEST
    if best["name"] == "final":
        if accelerator.is_main_process:
            _link(target, run.final.name)
    else:  # export the winning checkpoint the way the trainer exports final/
        if accelerator.is_main_process and target.is_symlink():
            target.unlink()
        model = load(Path(best["path"]), final=False)
        save_final(accelerator, model, tokenizer, recipe, SimpleNamespace(final=target))
        del model
        accelerator.free_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    selection = {"best": best["name"], "best_model": str(target), "metric": "validation loss (target tokens)",
                 "steps_per_epoch": per_epoch, "valid": valid_stats, "candidates": results}
    if accelerator.is_main_process:
        atomic_write_json(run.root / VALIDATION, selection)
    accelerator.wait_for_everyone()
    return selection


def _candidate_model(recipe, tokenizer, use_cpu: bool, path: Path, final: bool, meta: bool = False):
    """A model shaped like the trained one: for a checkpoint, the recipe's model (its weights come from the
    checkpoint); for final/, the saved weights (full model, or the recipe's base plus the saved adapter).
    ``meta``: the architecture only (the ranks that receive their shards from rank 0)."""
    from xllama.train.trainer import build_model

    if not final:
        return build_model(recipe, tokenizer, use_cpu, meta)
    if recipe.lora.enabled:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        model = build_model(recipe, tokenizer, use_cpu, meta)
        if meta:
            return model
        result = set_peft_model_state_dict(model, load_peft_weights(str(path / "adapter")))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise XllamaError(f"{path / 'adapter'}: adapter weights do not fit the recipe's model ({unexpected[:3]})")
        return model
    model_config = dataclasses.replace(recipe.model, name_or_path=str(path), init=None)
    return build_model(dataclasses.replace(recipe, model=model_config, lora=dataclasses.replace(recipe.lora,
                                                                                               enabled=False)),
                       tokenizer, use_cpu, meta)


def _link(target: Path, name: str) -> None:
    """Point ``target`` at its sibling ``name`` (a relative symlink, replaced atomically)."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    tmp = target.with_name(f".{target.name}.link.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, target)
