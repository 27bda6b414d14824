"""Checkpoints that are whole or absent, and exact resume.

``checkpoints/step-N`` is written into ``.step-N.tmp`` and renamed only after every rank has finished writing
(a barrier) and rank 0 has checked that every rank's marker ``ranks/rank-R.json`` is there. Resume refuses a
checkpoint that lacks any rank's state and names the missing file.

Contents: the model and optimizer state through torch.distributed.checkpoint (DCP: each rank writes its own
shard, a resume may use another world size), or accelerate's ``save_state`` under DeepSpeed (which also writes
``random_states_R.pkl`` per rank); ``trainer_state.json`` (step, scheduler, world size, engine). No RNG state is
needed for an exact resume: the data order is a function of (seed, step) and each packed row seeds its own
dropout (:func:`xllama.train.parallel.row_seed`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from xllama.errors import XllamaError
from xllama.io import atomic_write_json

log = logging.getLogger(__name__)

# Tests: "RANK:SECONDS" delays that rank's write (a slow file system, a straggler) to show the barrier holds.
SLOW_RANK_ENV = "XLLAMA_TEST_SLOW_CHECKPOINT_RANK"


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def completed(checkpoints: Path) -> list[Path]:
    """Renamed checkpoints, oldest first (a temporary ``.step-N.tmp`` is never one)."""
    done = [p for p in checkpoints.glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(done, key=step_of)


def required_files(checkpoint: Path, state: dict) -> list[Path]:
    """Every file a resume needs from every rank."""
    world = int(state["world_size"])
    files = [checkpoint / "ranks" / f"rank-{r}.json" for r in range(world)]
    if state["engine"] == "deepspeed":
        files += [checkpoint / f"random_states_{r}.pkl" for r in range(world)]
    else:
        files.append(checkpoint / "dcp" / ".metadata")
    return files


def missing_files(checkpoint: Path, state: dict) -> list[Path]:
    return [f for f in required_files(checkpoint, state) if not f.is_file()]


def save(accelerator, checkpoints: Path, step: int, model, optimizer, scheduler, engine: str, keep: int) -> Path:
    """Write ``checkpoints/step-{step}`` (collective: every rank calls it). ``keep``: how many to keep (>= 1)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoints / f"step-{step}"
    tmp = checkpoints / f".step-{step}.tmp"
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "ranks").mkdir(parents=True)
    accelerator.wait_for_everyone()
    if engine == "deepspeed":
        accelerator.save_state(str(tmp))
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "dcp"))
    _maybe_delay(rank)
    atomic_write_json(tmp / "ranks" / f"rank-{rank}.json", {"rank": rank, "world_size": world, "step": step})
    accelerator.wait_for_everyone()  # every rank has written everything before the rename
    if accelerator.is_main_process:
        state = {"step": step, "world_size": world, "engine": engine, "scheduler": scheduler.state_dict()}
        missing = missing_files(tmp, state)
        if missing:
            raise XllamaError(f"checkpoint {final} not written: {', '.join(map(str, missing))} missing after all "
                              "ranks finished")
        atomic_write_json(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in completed(checkpoints)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, checkpoint: Path, model, optimizer, scheduler, engine: str) -> int:
    """Restore model, optimizer and scheduler from ``checkpoint``; return its step. Refuses an incomplete one."""
    state = read_state(checkpoint)
    if state["engine"] != engine:
        raise XllamaError(f"cannot resume from {checkpoint}: it was written by {state['engine']} and this launch "
                          f"uses {engine}; launch as the run was started")
    if engine == "deepspeed":
        if state["world_size"] != accelerator.num_processes:
            raise XllamaError(f"cannot resume from {checkpoint}: DeepSpeed wrote it with {state['world_size']} "
                              f"processes, this launch has {accelerator.num_processes}")
        accelerator.load_state(str(checkpoint))
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        bundle = {"model": model_state, "optimizer": optim_state}
        dcp.load(bundle, checkpoint_id=str(checkpoint / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optimizer"])
        if state["world_size"] != accelerator.num_processes:
            log.warning("resuming a %d-process checkpoint on %d processes (DCP reshards the state)",
                        state["world_size"], accelerator.num_processes)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def load_weights(accelerator, checkpoint: Path, model, engine: str) -> None:
    """Restore only the model's weights from ``checkpoint`` (scoring a checkpoint needs no optimizer state).
    ``model`` is built and sharded as the trainer does it (under DeepSpeed: prepared by accelerate)."""
    read_state(checkpoint)  # refuses an incomplete checkpoint
    if engine == "deepspeed":
        accelerator.load_state(str(checkpoint))
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    bundle = {"model": get_model_state_dict(model)}
    dcp.load(bundle, checkpoint_id=str(checkpoint / "dcp"))
    set_model_state_dict(model, bundle["model"])


def read_state(checkpoint: Path) -> dict:
    """trainer_state.json, after checking that every rank's files are present (error names the first missing)."""
    path = checkpoint / "trainer_state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    for key in ("step", "world_size", "engine", "scheduler"):
        if key not in state:
            raise XllamaError(f"{path}: no {key!r}; this checkpoint was written by an older xllama and cannot be "
                              "resumed exactly")
    missing = missing_files(checkpoint, state)
    if missing:
        raise XllamaError(f"cannot resume from {checkpoint}: it lacks {', '.join(str(m) for m in missing)} "
                          f"(written by {state['world_size']} ranks); delete this checkpoint to resume from an "
                          "earlier one")
    return state


def _maybe_delay(rank: int) -> None:
    spec = os.environ.get(SLOW_RANK_ENV)
    if spec:
        slow_rank, seconds = spec.split(":")
        if int(slow_rank) == rank:
            time.sleep(float(seconds))
