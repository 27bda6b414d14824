"""How the model is spread over the processes: one place, the same whatever the launcher (torchtitan's
``parallelize.py`` idea).

``accelerate launch`` and ``torchrun`` only start the processes; accelerate's ``Accelerator`` then gives the
device, the process group and DeepSpeed. Everything else is applied here, from recipe keys:

- FSDP2 (``fully_shard``) when there are several processes: one unit per decoder layer (the model's
  ``_no_split_modules`` class) plus the root; ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``
  by default (``train.precision``, ``train.reduce_dtype``); master weights and optimizer state stay fp32
  (sharded). Gradients are reduce-scattered after every micro-batch and accumulate in the fp32 sharded
  gradient, so no unsharded gradient of the whole model is kept across micro-batches.
- Activation checkpointing (``train.gradient_checkpointing``, transformers' non-reentrant checkpointing of each
  decoder layer) and CPU offload of parameters, gradients and optimizer state (``train.cpu_offload``).
- Memory-efficient loading: rank 0 reads the weights once (CPU); the other ranks build the model on the meta
  device; after sharding, ``set_model_state_dict(..., broadcast_from_rank0=True)`` sends every rank its shard.
- DeepSpeed ZeRO-3 when accelerate was launched with a DeepSpeed config: accelerate prepares the engine, and
  the recipe's ``train.max_grad_norm`` is written into the DeepSpeed config (DeepSpeed clips inside its step).
- One process: the model on the device; with ``precision: bf16``, bf16 autocast over fp32 weights (GPU or CPU).

The effective plan (read back from the sharded model, not from the request) is printed at start and written to
``RUN/plan.json``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field

from xllama.errors import XllamaError

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


@dataclass
class Plan:
    """What parallelism and precision the run actually uses (``RUN/plan.json``)."""

    engine: str  # fsdp2 | deepspeed | single
    world_size: int
    device: str
    attn_implementation: str
    param_dtype: str  # the dtype of the weights in forward/backward (compute)
    reduce_dtype: str | None  # the dtype gradients are reduced in across ranks (None: one process)
    master_dtype: str  # the dtype of the weights the optimizer updates
    units: list = field(default_factory=list)  # modules sharded as FSDP units, root last
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    loading: str = ""
    gradient_sync: str = ""
    max_grad_norm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        units = f"{len(self.units)} FSDP units ({self.units[0]} ... {self.units[-1]})" if self.units else "no sharding"
        return (f"parallel plan: {self.engine} on {self.world_size} process(es), {self.device}; {units}; "
                f"params {self.param_dtype}, reduce {self.reduce_dtype}, master {self.master_dtype}; "
                f"cpu_offload={self.cpu_offload}, activation_checkpointing={self.activation_checkpointing}; "
                f"attention {self.attn_implementation}; loading: {self.loading}")


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise XllamaError(f"unknown dtype {name!r}; expected one of {', '.join(sorted(set(DTYPES)))}") from None


def mixed_precision_policy(precision: str, reduce_dtype: str):
    """FSDP2's policy: compute in bf16 (``precision: bf16``) or fp32, reduce gradients in ``reduce_dtype``.

    The same on a CPU: FSDP2 all-gathers bf16 parameters and reduce-scatters fp32 or bf16 gradients over gloo
    (torch 2.13; tests/test_parallel_bf16.py runs both on 2 processes), so ``precision: bf16`` computes in bf16
    wherever it runs and the CPU recipes ask for ``fp32``."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param = torch.bfloat16 if precision == "bf16" else torch.float32
    return MixedPrecisionPolicy(param_dtype=param, reduce_dtype=torch_dtype(reduce_dtype))


def decoder_layers(model) -> list[tuple[str, object]]:
    """(name, module) of every decoder layer: the classes the model lists in ``_no_split_modules``."""
    classes: set[str] = set()
    for m in model.modules():
        classes.update(getattr(m, "_no_split_modules", None) or [])
    layers = [(n, m) for n, m in model.named_modules() if type(m).__name__ in classes]
    if not layers:
        raise XllamaError(f"cannot shard {type(model).__name__}: it names no decoder-layer class in "
                          "_no_split_modules (FSDP needs one unit per layer)")
    return layers


def engine_for(accelerator) -> str:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "fsdp2" if accelerator.num_processes > 1 else "single"


def build_and_shard(build, recipe, accelerator, attn_implementation: str):
    """Build the model (``build(meta: bool)``), shard it and load its weights; return (model, Plan).

    ``build(meta=True)`` must return the same architecture with parameters on the meta device."""
    import torch

    t = recipe.train
    engine = engine_for(accelerator)
    device = accelerator.device
    use_cpu = device.type == "cpu"
    world, rank = accelerator.num_processes, accelerator.process_index
    if engine != "fsdp2":
        model = build(meta=False)
        if engine == "single":
            model.to(device)
        # one process: bf16 autocast on the CPU too (torch.autocast("cpu")); DeepSpeed casts by its config, GPU only
        compute = "bfloat16" if t.precision == "bf16" and (engine == "single" or not use_cpu) else "float32"
        plan = Plan(engine=engine, world_size=world, device=str(device), attn_implementation=attn_implementation,
                    param_dtype=compute, reduce_dtype=None if engine == "single" else compute,
                    master_dtype=_dtype_name(next(model.parameters()).dtype),
                    activation_checkpointing=t.gradient_checkpointing,
                    loading="every process reads the weights" if engine == "deepspeed" else "one process",
                    gradient_sync="DeepSpeed (its config)" if engine == "deepspeed" else "none",
                    max_grad_norm=t.max_grad_norm)
        return model, plan

    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    if rank == 0:
        model = build(meta=False)
        full_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)}
        with torch.device("meta"):
            meta = build(meta=True)
        model = meta
    else:
        full_state, buffers = {}, None
        with torch.device("meta"):
            model = build(meta=True)
    policy = mixed_precision_policy(t.precision, t.reduce_dtype)
    offload = CPUOffloadPolicy() if t.cpu_offload else None
    kwargs = {"mp_policy": policy, **({"offload_policy": offload} if offload else {})}
    units = []
    for name, layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
        units.append(name)
    fully_shard(model, **kwargs)
    units.append("<root>")
    model.to_empty(device="cpu" if t.cpu_offload else device)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full_state
    _broadcast_buffers(model, buffers, device)
    effective = next(iter(_fsdp_policies(model)))
    masters = {_dtype_name(p.dtype) for p in model.parameters()}
    plan = Plan(engine="fsdp2", world_size=world, device=str(device), attn_implementation=attn_implementation,
                param_dtype=_dtype_name(effective.param_dtype or torch.float32),
                reduce_dtype=_dtype_name(effective.reduce_dtype or effective.param_dtype or torch.float32),
                master_dtype=",".join(sorted(masters)), units=units, cpu_offload=t.cpu_offload,
                activation_checkpointing=t.gradient_checkpointing,
                loading="rank 0 reads the weights; the others build on meta and receive their shards "
                        "(set_model_state_dict broadcast_from_rank0)",
                gradient_sync="reduce-scatter after every micro-batch; accumulation in the fp32 sharded gradient",
                max_grad_norm=t.max_grad_norm)
    return model, plan


def _fsdp_policies(model):
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            yield m._get_fsdp_state()._mp_policy


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _broadcast_buffers(model, rank0_buffers: dict | None, device) -> None:
    """Buffers (e.g. rotary frequencies, not in the state dict when non-persistent) are not sharded: after
    ``to_empty`` they hold garbage on every rank, so rank 0 sends the values it computed when it built the model.
    They live on the compute device (also under CPU offload, which concerns parameters only)."""
    import torch
    import torch.distributed as dist

    for module_name, module in model.named_modules():
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            key = f"{module_name}.{name}" if module_name else name
            value = (rank0_buffers[key].to(device) if rank0_buffers is not None
                     else torch.empty_like(buf, device=device))
            dist.broadcast(value, src=0)
            module._buffers[name] = value


def configure_deepspeed(accelerator, recipe) -> None:
    """DeepSpeed clips inside its own step: make its ``gradient_clipping`` the recipe's ``train.max_grad_norm``."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    before = config.get("gradient_clipping")
    config["gradient_clipping"] = recipe.train.max_grad_norm
    if before not in (None, "auto", recipe.train.max_grad_norm):
        log.warning("DeepSpeed config gradient_clipping %s replaced by the recipe's train.max_grad_norm %s",
                    before, recipe.train.max_grad_norm)


def autocast(plan: Plan):
    """bf16 autocast for a single process, GPU or CPU (FSDP2 casts by its policy; DeepSpeed by its config)."""
    import torch

    if plan.engine == "single" and plan.param_dtype == "bfloat16":
        return torch.autocast(device_type=plan.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_grad_norm_(parameters, max_norm: float):
    """Clip by the global gradient norm; sharded (DTensor) gradients are reduced to the full norm first."""
    import torch
    from torch.distributed.tensor import DTensor

    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters], 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def row_seed(seed: int, step: int, examples) -> int:
    """The RNG seed for one packed row (dropout): a function of the data, not of the rank or of the history,
    so a row draws the same dropout mask whatever the world size and after a resume."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, *sorted(int(i) for i in examples)]).generate_state(1)[0])


def full_state_dict(accelerator, model) -> dict:
    """The full (unsharded) state dict on the main process, CPU tensors; collective under FSDP2/ZeRO-3."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(model)
