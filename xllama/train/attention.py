"""The attention path for packed rows, and the start-up check that packed examples never see each other.

A packed row holds several examples back to back; every example must attend only to its own earlier tokens.
The boundaries come from the packing plan (``packed_row``'s ``seq_lengths``) and are handed to the model
explicitly, so isolation never rests on transformers inferring them from ``position_ids`` (which it does only
from 4.54 with torch 2.6, and only without a cache object):

- ``flash_attention_2`` (CUDA, flash-attn installed): the varlen kernel, from ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` (transformers' FlashAttentionKwargs). Computes each example's causal triangle only.
- ``flex_attention`` (CUDA without flash-attn): a document-causal ``BlockMask``; blocks across examples are skipped,
  no dense T x T mask is built.
- ``sdpa`` / ``eager`` (the CPU paths): a dense 4-D document-causal mask (boolean for sdpa, additive for eager);
  T x T, fine for CPU-sized rows, and on a GPU only if asked for.

``check_isolation`` runs at every training start: a packed row and its examples alone through a tiny copy of the
model's architecture with the same attention path must give the same logits, or training stops.
"""

from __future__ import annotations

import copy
import importlib.util
import logging

from xllama.errors import XllamaError

log = logging.getLogger(__name__)

PATHS = ("flash_attention_2", "flex_attention", "sdpa", "eager")


def choose_attention(requested: str, use_cpu: bool) -> str:
    """The attention implementation for packed rows: flash varlen > flex (CUDA) > sdpa (CPU), unless asked."""
    if requested != "auto":
        if requested == "flash_attention_2" and (use_cpu or importlib.util.find_spec("flash_attn") is None):
            raise XllamaError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn "
                              "package (pip install flash-attn); use auto to pick the best available path")
        return requested
    if use_cpu:
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "flex_attention"


def attention_kwargs(implementation: str, seq_lengths, device, dtype=None) -> dict:
    """Keyword arguments for the model's forward that confine attention to each example of a packed row.

    ``seq_lengths``: the example lengths of the row, in order (they sum to the row's width).
    """
    import torch

    lengths = torch.as_tensor(seq_lengths, dtype=torch.int64).flatten().cpu()
    total = int(lengths.sum())
    if implementation in ("flash_attention_2", "flash_attention_3"):
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        cu = cu.to(device)
        longest = int(lengths.max())
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(device)  # example index of each token
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def document_causal(b, h, q, kv):
            return (doc[q] == doc[kv]) & (q >= kv)

        return {"attention_mask": create_block_mask(document_causal, None, None, total, total, device=device)}
    if implementation not in ("sdpa", "eager"):
        raise XllamaError(f"attention path {implementation!r} is not supported for packed rows; "
                          f"choose one of {', '.join(PATHS)}")
    pos = torch.arange(total, device=device)
    allowed = (doc[:, None] == doc[None, :]) & (pos[:, None] >= pos[None, :])
    if implementation == "sdpa":
        return {"attention_mask": allowed[None, None]}
    dtype = dtype or torch.float32
    mask = torch.zeros(total, total, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"attention_mask": mask[None, None]}


def model_attention(model) -> str:
    """The attention implementation a (possibly wrapped: peft, DDP, FSDP, DeepSpeed) model runs with."""
    inner = model
    while getattr(inner, "config", None) is None and hasattr(inner, "module"):
        inner = inner.module
    return inner.config._attn_implementation


def packed_forward(model, input_ids, position_ids, seq_lengths, **kwargs):
    """The model's forward on a packed row (batch of one), with the example boundaries passed explicitly for the
    attention path the model was built with."""
    import torch

    kind = input_ids.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else next(model.parameters()).dtype
    extra = attention_kwargs(model_attention(model), seq_lengths, input_ids.device, dtype)
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra, **kwargs)


def tiny_copy_config(config):
    """The model's config shrunk to a few layers and a small width, keeping its architecture and head grouping."""
    cfg = copy.deepcopy(config)
    heads = 4
    kv = getattr(config, "num_key_value_heads", None)
    groups = (config.num_attention_heads // kv) if kv else 1
    cfg.num_attention_heads = heads
    if kv is not None:
        cfg.num_key_value_heads = max(1, heads // groups) if heads % groups == 0 else heads
    cfg.hidden_size = 64
    if getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = 16
    cfg.intermediate_size = 128
    cfg.num_hidden_layers = 2
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = list(cfg.layer_types)[:2]
    cfg.vocab_size = 128
    cfg.initializer_range = 0.2  # large weights: a leak between examples moves the logits visibly
    cfg.use_cache = False
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(cfg, key, None) is not None:
            setattr(cfg, key, 0)
    return cfg


def check_isolation(config, implementation: str, device, dtype=None, lengths=(5, 9, 3)) -> float:
    """Run a packed row and its examples alone through a tiny copy of the architecture; raise if they differ.

    Returns the largest logit difference. Takes milliseconds (two layers, width 64, 17 tokens).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    dtype = dtype or (torch.bfloat16 if implementation.startswith("flash") else torch.float32)
    cfg = tiny_copy_config(config)
    cfg._attn_implementation = implementation
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=implementation)
        model.to(device=device, dtype=dtype).eval()
        examples = [torch.randint(1, cfg.vocab_size, (n,)) for n in lengths]
    ids = torch.cat(examples)[None].to(device)
    pos = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    with torch.no_grad():
        packed = packed_forward(model, ids, pos, lengths).logits.float()[0]
        alone = torch.cat([packed_forward(model, x[None].to(device), torch.arange(len(x))[None].to(device),
                                          [len(x)]).logits.float()[0] for x in examples])
    diff = (packed - alone).abs().max().item()
    scale = alone.abs().max().item()
    tolerance = 1e-4 * max(scale, 1.0) if dtype == torch.float32 else 2e-2 * max(scale, 1.0)
    if not diff <= tolerance:
        raise XllamaError(
            f"packed-example isolation check failed on attention path {implementation!r}: examples packed into one "
            f"row give logits up to {diff:.3g} away from the same examples run alone (tolerance {tolerance:.1g}), "
            f"so packed examples would attend to each other. torch {torch.__version__}, transformers "
            f"{transformers.__version__}. Upgrade to torch>=2.6 and transformers>=4.54, or choose another "
            "model.attn_implementation."
        )
    log.info("packed-example isolation check passed (%s, max logit difference %.2g)", implementation, diff)
    return diff
