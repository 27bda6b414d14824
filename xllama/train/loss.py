"""Token losses computed without materialising the [tokens x vocab] fp32 logits.

``F.cross_entropy(logits.float(), ...)`` on a 16K-token row with a 128K vocabulary holds 8 GiB of fp32 logits
(and as much again for their gradient). Here the output layer and the loss run together, a chunk of target
tokens at a time, inside the model's own forward: the LM head's ``forward`` is swapped for the loss for the
duration of one call, so FSDP/DeepSpeed hooks, peft wrappers and accelerate's autocast all run as usual, and
only rows that carry a target are projected at all (prompt tokens never reach the output layer).

- ``causal_lm_loss``: the summed token cross-entropy of a packed row. Liger's fused linear cross-entropy when it
  is installed and the row is on CUDA; otherwise ``LinearCrossEntropy``, which computes each chunk's gradient
  in the forward pass and keeps only the gradients (hidden x vocab-sized for the weight, as its ``.grad`` would be),
  never the logits.
- ``token_logprobs``: log p(label) per token (0 where there is no label), chunked with activation checkpointing
  so any loss built on it (preference losses) backpropagates through one chunk of logits at a time.

Models whose logits are post-processed after the LM head (soft-capping, logit scaling) fall back to the full
logits, with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

from xllama.data.tokenize import IGNORE_INDEX
from xllama.train.attention import packed_forward

log = logging.getLogger(__name__)

DEFAULT_CHUNK_TOKENS = 4096
# config attributes that change the logits after the LM head: the chunked loss would skip them
_POST_HEAD = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def unwrap(model):
    """Through DDP/FSDP1/DeepSpeed ``.module`` wrappers (peft models answer get_output_embeddings themselves)."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module
    return model


def output_head(model):
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(unwrap(model)).__name__} has no output embeddings (LM head)")
    return head


def _post_processes_logits(model) -> bool:
    config = getattr(unwrap(model), "config", None)
    return any(getattr(config, key, None) not in (None, 1, 1.0) for key in _POST_HEAD)


@contextlib.contextmanager
def _head_replaced(head, fn):
    """Call ``fn(hidden)`` where the model calls its LM head (hooks of wrappers still run around it)."""
    had = "forward" in vars(head)
    original = head.forward
    head.forward = fn
    try:
        yield original
    finally:
        if had:
            head.forward = original
        else:
            del head.forward


def _compute_dtype(x):
    import torch

    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


# --- the summed cross-entropy ------------------------------------------------------------------------------------

def _linear_cross_entropy_function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum_t CE(hidden_t @ W^T + b, label_t) over rows with a label, in chunks; gradients made in the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, labels, chunk_tokens):
            dtype = _compute_dtype(hidden)
            with torch.autocast(hidden.device.type, enabled=False):
                w = weight.to(dtype)
                b = bias.to(dtype) if bias is not None else None
                need = ctx.needs_input_grad
                grad_hidden = torch.zeros_like(hidden) if need[0] else None
                grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
                grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
                total = torch.zeros((), dtype=torch.float32, device=hidden.device)
                rows = (labels != IGNORE_INDEX).nonzero().flatten()
                for start in range(0, len(rows), chunk_tokens):
                    idx = rows[start:start + chunk_tokens]
                    h, y = hidden[idx].to(dtype), labels[idx]
                    logits = torch.nn.functional.linear(h, w, b).float()
                    lse = torch.logsumexp(logits, dim=-1)
                    total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
                    if grad_hidden is None and grad_weight is None and grad_bias is None:
                        continue
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(len(y), device=y.device), y] -= 1.0
                    if grad_bias is not None:
                        grad_bias += g.sum(0)
                    g = g.to(dtype)
                    if grad_hidden is not None:
                        grad_hidden[idx] = (g @ w).to(hidden.dtype)
                    if grad_weight is not None:
                        if dtype == torch.float32:
                            grad_weight.addmm_(g.t(), h)
                        else:
                            grad_weight += (g.t() @ h).float()
                    del logits, g
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            w_dtype, b_dtype = ctx.dtypes
            scale = grad_total.float()
            gh = (grad_hidden * scale.to(grad_hidden.dtype)) if grad_hidden is not None else None
            gw = (grad_weight * scale).to(w_dtype) if grad_weight is not None else None
            gb = (grad_bias * scale).to(b_dtype) if grad_bias is not None else None
            return gh, gw, gb, None, None

    return LinearCrossEntropy


_FUNCTIONS: dict = {}


def linear_cross_entropy(hidden, head, labels, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """Summed cross-entropy of ``head(hidden)`` against ``labels`` (-100: no loss), never all logits at once.

    ``hidden``: [tokens, hidden]; ``head``: an ``nn.Linear`` LM head (use ``token_logprobs`` for other heads).
    """
    import torch

    if hidden.is_cuda and importlib.util.find_spec("liger_kernel") is not None:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
        dtype = _compute_dtype(hidden)
        with torch.autocast("cuda", enabled=False):
            bias = head.bias.to(dtype) if head.bias is not None else None
            return fused(head.weight.to(dtype), hidden.to(dtype), labels, bias).float()
    if "lce" not in _FUNCTIONS:
        _FUNCTIONS["lce"] = _linear_cross_entropy_function()
    return _FUNCTIONS["lce"].apply(hidden, head.weight, head.bias, labels, chunk_tokens)


def causal_lm_loss(model, row: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """The summed token cross-entropy of one packed row (``packed_row``'s tensors, batch of one).

    ``model`` may be wrapped (peft, DDP, FSDP, DeepSpeed); the example boundaries go to the attention path it
    was built with (``xllama.train.attention.packed_forward``).
    """
    import torch
    import torch.nn.functional as F

    labels = row["labels"].flatten()
    head = output_head(model)
    args = (model, row["input_ids"], row["position_ids"], row["seq_lengths"])
    if _post_processes_logits(model):
        _warn_full_logits(model)
        logits = packed_forward(*args).logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if not isinstance(head, torch.nn.Linear):  # e.g. a LoRA-adapted or modules_to_save LM head
        return -token_logprobs(model, row, chunk_tokens).sum()

    def loss_head(hidden):
        return linear_cross_entropy(hidden.flatten(0, 1), head, labels, chunk_tokens)

    with _head_replaced(head, loss_head):
        return packed_forward(*args).logits


# --- per-token log-probabilities (shared with preference losses) -----------------------------------------------

def head_logprobs(hidden, head_forward, labels, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """log p(label_t) for every row of ``hidden`` [tokens, hidden] (0 where label is -100), one checkpointed
    chunk of logits at a time: the backward recomputes a chunk's logits instead of keeping them."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def chunk_logprobs(h, y):
        logits = head_forward(h).float()
        return logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)

    rows = (labels != IGNORE_INDEX).nonzero().flatten()
    parts = [checkpoint(chunk_logprobs, hidden[idx], labels[idx], use_reentrant=False)
             for idx in rows.split(chunk_tokens)]
    out = torch.zeros(len(labels), dtype=torch.float32, device=hidden.device)
    return out.index_put((rows,), torch.cat(parts)) if parts else out + 0.0 * hidden.sum()


def token_logprobs(model, row: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
    """log p(label_t) for every token of a packed row, shape [tokens] (0 where labels is -100)."""
    labels = row["labels"].flatten()
    head = output_head(model)
    args = (model, row["input_ids"], row["position_ids"], row["seq_lengths"])
    if _post_processes_logits(model):
        import torch

        _warn_full_logits(model)
        logits = packed_forward(*args).logits.float().flatten(0, 1)
        safe = labels.clamp_min(0)
        logp = logits.gather(1, safe[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
        return logp.masked_fill(labels == IGNORE_INDEX, 0.0)
    holder = {}

    def logprob_head(hidden):
        return head_logprobs(hidden.flatten(0, 1), holder["forward"], labels, chunk_tokens)

    with _head_replaced(head, logprob_head) as original:
        holder["forward"] = original
        return packed_forward(*args).logits


_WARNED: set = set()


def _warn_full_logits(model) -> None:
    name = type(unwrap(model)).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        log.warning("%s post-processes its logits after the LM head: computing the loss on the full logits "
                    "(no chunking)", name)


# --- preference losses ---------------------------------------------------------------------------------------------

def sequence_logprobs(token_logps, sequence_ids):
    """Sum per-token log-probabilities (``token_logprobs``: 0 where no label) per sequence of a packed row.

    ``sequence_ids`` [1, tokens] numbers the row's sequences 0, 1, ... (``packed_row``) -> [sequences]."""
    import torch

    seq = sequence_ids.flatten()
    sums = torch.zeros(int(seq.max()) + 1, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, seq, token_logps)


def cpo_loss(chosen_logps, rejected_logps, beta: float):
    """CPO's preference term per pair (Xu et al. 2024, eq. 3; TRL's CPOTrainer, loss_type sigmoid):
    -log sigmoid(beta * (log p(y_w|x) - log p(y_l|x))), sequence log-probabilities over target tokens. The full CPO
    loss adds the NLL of y_w (:class:`xllama.alma.cpo.CPO`)."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * (chosen_logps - rejected_logps))
