"""Batched generation shared by every evaluation and by ``xllama translate``.

Why not a plain loop over ``model.generate``: an evaluation of 1,012 FLORES sentences per direction is
dominated by padding, by sequences that keep generating after their answer is complete, and by small batches.
This engine tokenises once, sorts prompts by length (little padding), packs batches up to a token budget
(large batches, halved on out-of-memory), left-pads, stops every sequence on its own as soon as it emits EOS or
completes the first line of its answer, restores the input order, and appends each finished batch to a JSONL
cache keyed by (model fingerprint, token ids of the prompts, decoding settings), so an interrupted evaluation
resumes where it stopped. Decoding is transformers' own ``generate`` (greedy or beam, KV cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Sequence

from xllama.distributed import barrier, broadcast_object, gather_objects, rank_and_world, shard
from xllama.errors import XllamaError
from xllama.io import content_hash

logger = logging.getLogger(__name__)

# Default batch budget in tokens (batch size x (longest prompt + max_new_tokens) x beams).
DEFAULT_BATCH_TOKENS = {"cuda": 65536, "cpu": 8192}
CACHE_FORMAT = 1


def first_line(text: str) -> str:
    """The first non-empty line of a generated answer: models often open with a newline, then answer."""
    return text.strip().split("\n", 1)[0].strip()


# End-of-text markers of common model families. An instruct model prompted without its chat template often
# ends with its pre-training marker (SmolLM2: <|endoftext|>) rather than its chat EOS (<|im_end|>).
END_MARKERS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>",
               "<eos>")


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS, the model's generation_config EOS ids (Llama-3 lists
    two) and the END_MARKERS, each only where the tokenizer knows it as a special token. A config EOS that is
    an ordinary text token (a random config's default, a GGUF conversion slip) would cut answers short."""
    if tokenizer.eos_token_id is None:
        raise XllamaError("the tokenizer defines no EOS token; set eos_token in its tokenizer_config.json")
    special = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    special.update(zip(tokenizer.all_special_ids, tokenizer.all_special_tokens))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    markers = [i for i, content in sorted(special.items()) if content in END_MARKERS]
    ids = [int(tokenizer.eos_token_id)]
    for token_id in [*configured, *markers]:
        if token_id is not None and int(token_id) in special and int(token_id) not in ids:
            ids.append(int(token_id))
    return ids


# ---------------------------------------------------------------------------------------------- stopping


_LINE_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _line_tables(tokenizer):
    """Per-token facts for first-line stopping, computed once per tokenizer: (has_newline, has_content,
    newline_after_content). Special tokens count as neither text nor newline."""
    import torch

    tables = _LINE_TABLES.get(tokenizer)
    if tables is not None:
        return tables
    size = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    special = set(tokenizer.all_special_ids)
    has_newline = torch.zeros(size, dtype=torch.bool)
    has_content = torch.zeros(size, dtype=torch.bool)
    newline_after_content = torch.zeros(size, dtype=torch.bool)
    for i, piece in enumerate(pieces):
        if i in special:
            continue
        has_content[i] = bool(piece.strip())
        if "\n" in piece:
            has_newline[i] = True
            newline_after_content[i] = bool(piece[: piece.rfind("\n")].strip())
    tables = (has_newline, has_content, newline_after_content)
    _LINE_TABLES[tokenizer] = tables
    return tables


class FirstLineStop:
    """A per-sequence StoppingCriteria: True for a sequence once its answer holds a newline after some text.

    Leading newlines/spaces do not stop it (many models open with "\\n"), so the first line of the answer is
    always complete. Works on token ids only (no decoding per step); the prompt length is set per batch.
    """

    def __init__(self, tokenizer, skip_leading_newlines: bool = True):
        self.tables = _line_tables(tokenizer)
        self.prompt_length = 0
        self.skip_leading_newlines = skip_leading_newlines  # False: any newline stops (lm-eval's until "\n")

    def __call__(self, input_ids, scores=None, **kwargs):
        if self.tables[0].device != input_ids.device:
            self.tables = tuple(t.to(input_ids.device) for t in self.tables)
        has_newline, has_content, newline_after_content = self.tables
        generated = input_ids[:, self.prompt_length:]
        last = generated[:, -1]
        if not self.skip_leading_newlines:
            return has_newline[last]
        seen_text = has_content[generated[:, :-1]].any(dim=1)
        return newline_after_content[last] | (has_newline[last] & seen_text)


class BatchProgress:
    """Moves a progress bar inside a batch: a sentence counts as soon as it ends (EOS, or the end of its first
    line), and the postfix counts generated tokens, so a long batch on a CPU shows it is working. Called once
    per decoding step with the ids so far (greedy: one row per sentence; beam search counts tokens only)."""

    def __init__(self, bar, eos_ids: Sequence[int], refresh_s: float = 0.5):
        self.bar = bar
        self.eos_ids = list(eos_ids)
        self.refresh_s = refresh_s
        self.tokens = 0
        self.counted = 0
        self.finished = None
        self.num_beams = 1
        self._shown = 0.0

    def start(self, num_beams: int = 1, note: str = "") -> None:
        """A new batch; ``note`` (e.g. its prompt sizes) shows while its prompts are read, before any token."""
        self.counted, self.finished, self.num_beams = 0, None, num_beams
        if note:
            self.bar.set_postfix_str(f"{note}; {self.tokens:,} tokens generated", refresh=True)

    def __call__(self, input_ids, stopped=None) -> None:
        import time

        import torch

        if self.num_beams == 1:
            ended = torch.isin(input_ids[:, -1], torch.tensor(self.eos_ids, device=input_ids.device))
            if stopped is not None:
                ended |= stopped
            if self.finished is None:
                self.finished = torch.zeros_like(ended)
            self.tokens += int((~self.finished).sum())
            new = int((ended & ~self.finished).sum())
            self.finished |= ended
            if new:
                self.counted += new
                self.bar.update(new)
        else:
            self.tokens += input_ids.shape[0]
        now = time.monotonic()
        if now - self._shown >= self.refresh_s:
            self._shown = now
            self.bar.set_postfix_str(f"{self.tokens:,} tokens generated", refresh=True)

    def finish(self, rows: int) -> None:
        """The batch is done: count its sentences not counted yet (those cut at max_new_tokens)."""
        self.bar.update(rows - self.counted)
        self.counted = 0

    def undo(self) -> None:
        """The batch failed (out of memory) and will be regenerated: take its sentences back."""
        self.bar.update(-self.counted)
        self.counted = 0


def _stopping_criteria(stop, monitor=None):
    """Wrap FirstLineStop (and the progress monitor) in transformers' StoppingCriteria (imported lazily)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Criterion(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stopped = stop(input_ids, scores) if stop is not None else None
            if monitor is not None:
                monitor(input_ids, stopped)
            if stopped is None:
                import torch

                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            return stopped

    return StoppingCriteriaList([_Criterion()])


# ---------------------------------------------------------------------------------------------- batching


def plan_batches(lengths: Sequence[int], max_new_tokens: int, batch_tokens: int | None = None,
                 batch_size: int | None = None, num_beams: int = 1) -> list[list[int]]:
    """Group prompt indices into batches, longest first: a batch grows while batch x (its longest prompt +
    max_new_tokens) x beams stays within ``batch_tokens`` and, when given, its size within ``batch_size``.

    Longest first, so an out-of-memory error shows on the first batch, not after an hour.
    """
    if batch_tokens is None and batch_size is None:
        raise XllamaError("give a batch size or a token budget (batch_tokens)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        cost = (len(current) + 1) * (longest + max_new_tokens) * num_beams
        fits_tokens = batch_tokens is None or cost <= batch_tokens
        fits_size = batch_size is None or len(current) < batch_size
        if current and not (fits_tokens and fits_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device=None):
    """Stack token-id lists into (input_ids, attention_mask), padded on the left so every prompt ends at the
    same position and generation continues right after each one."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


# ---------------------------------------------------------------------------------------------- caching


def model_fingerprint(model) -> str:
    """A cheap identity of a model's weights: class, config, dtype and 64 evenly spaced values of every tensor.

    Reading all weights of a 7B model would take minutes; two different checkpoints agreeing on thousands of
    sampled values is not a risk worth that.
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 64)
            sample = flat[::step][:64].to(device="cpu", dtype=torch.float32)
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(str(tensor.dtype).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


class GenerationCache:
    """Finished outputs of one (model, prompts, settings) run, as JSONL appended one line per batch.

    The first line records the key and settings; each further line holds ``{"i": [indices], "out": [texts]}``.
    A line cut short by an interruption is dropped (and truncated away) on the next open.
    """

    def __init__(self, directory: str | os.PathLike, key: str, header: dict, shard: str = ""):
        self.path = Path(directory) / f"{key}{shard}.jsonl"  # shard: ".rank1of4" in a multi-process run
        self.key = key
        self.done: dict[int, str] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            self._load()
        if not self.path.is_file() or self.path.stat().st_size == 0:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": CACHE_FORMAT, "key": key, **header}, ensure_ascii=False) + "\n")

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # an interrupted append: drop the partial line so the next append starts clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise XllamaError(f"{self.path}: line {lineno}: malformed cache line; delete the file to regenerate")
            if lineno == 1:
                if record.get("key") != self.key:
                    raise XllamaError(f"{self.path}: cache key mismatch; delete the file to regenerate")
                continue
            self.done.update(zip(record["i"], record["out"]))

    def all_shards_done(self) -> dict[int, str]:
        """Outputs of this key in every shard's file (runs with any number of processes), read without
        writing: a line another process is still appending is skipped."""
        found: dict[int, str] = {}
        for path in sorted(self.path.parent.glob(f"{self.key}*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "i" in record and record.get("key") is None:
                    found.update(zip(record["i"], record["out"]))
        return found

    def append(self, indices: Sequence[int], outputs: Sequence[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"i": list(indices), "out": list(outputs)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.update(zip(indices, outputs))


# ---------------------------------------------------------------------------------------------- engine


def decoding_settings(max_new_tokens: int, num_beams: int = 1, stop_at_newline: bool = True,
                      eos_ids: Sequence[int] = (), skip_leading_newlines: bool = True) -> dict:
    """The settings that change outputs; recorded in result files and part of the cache key."""
    return {
        "decoding": "greedy" if num_beams == 1 else "beam",
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "stop": ("eos+first_line" if skip_leading_newlines else "eos+newline") if stop_at_newline else "eos",
        "eos_token_ids": list(eos_ids),
    }


def generation_record(model, settings: dict, batch_tokens: int | None, batch_size: int | None) -> dict:
    """The 'decoding' block of a results file: what changes outputs (``settings``, the weights' dtype) and how
    batching was set."""
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {**settings, "batch_tokens": batch_tokens, "batch_size": batch_size, "dtype": dtype}


def _default_batch_tokens(device) -> int:
    return DEFAULT_BATCH_TOKENS["cuda" if str(device).startswith("cuda") else "cpu"]


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in str(error).lower()


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int | None = None,
             batch_tokens: int | None = None, num_beams: int = 1, stop_at_newline: bool = True,
             progress: bool = True, cache: str | os.PathLike | None = None, desc: str = "generating",
             skip_leading_newlines: bool = True) -> list[str]:
    """Generate one answer per prompt, in input order.

    With ``stop_at_newline`` each answer is the first non-empty line of the continuation (generation of a
    sequence stops as soon as that line is complete); otherwise the whole continuation up to EOS, stripped.
    ``skip_leading_newlines=False`` is lm-eval's ``until: ["\n"]``: the text before the first newline, even
    when that is empty. Under ``accelerate launch`` / ``torchrun`` each process generates every world-th batch
    (its own cache file, ``<key>.rank<r>of<w>.jsonl``) and every process returns all outputs.
    ``batch_tokens`` bounds batch x (prompt + max_new_tokens) x beams; ``batch_size`` caps rows per batch.
    ``cache``: a directory; finished batches are appended there and a rerun generates only what is missing.
    In beam search a newline ends a hypothesis like EOS does, so beams compete on complete first lines.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    prompts = list(prompts)
    if max_new_tokens < 1:
        raise XllamaError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    if num_beams < 1:
        raise XllamaError(f"num_beams must be at least 1 (got {num_beams})")
    if not prompts:
        return []
    device = next(model.parameters()).device
    if batch_tokens is None and batch_size is None:
        batch_tokens = _default_batch_tokens(device)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max(lengths) + max_new_tokens > limit:
        logger.warning("longest prompt (%d tokens) + max_new_tokens (%d) exceeds the model's %d positions",
                       max(lengths), max_new_tokens, limit)

    settings = decoding_settings(max_new_tokens, num_beams, stop_at_newline, eos_ids, skip_leading_newlines)
    store = None
    rank, world = rank_and_world()
    if cache is not None:
        key = content_hash([model_fingerprint(model), content_hash(encoded), settings, CACHE_FORMAT])
        store = GenerationCache(cache, key, {"n": len(prompts), "settings": settings},
                                shard="" if world == 1 else f".rank{rank}of{world}")
    done: dict[int, str] = dict(store.done) if store else {}
    if store:  # outputs of every shard's file count, whatever the number of processes that wrote them
        barrier()  # every process has cleaned its own file before rank 0 reads them all
        done = broadcast_object(store.all_shards_done() if rank == 0 else None)
        if done:
            logger.info("resuming from %s: %d of %d outputs cached", store.path.parent, len(done), len(prompts))

    todo = [i for i in range(len(prompts)) if i not in done]
    stop = FirstLineStop(tokenizer, skip_leading_newlines) if stop_at_newline else None
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, eos_token_id=eos_ids,
        pad_token_id=pad_id, use_cache=True,
    )
    budget = batch_tokens
    # Each process takes every world-th batch of the length-sorted plan (the same batches as one process
    # would run, so the outputs are identical), then the outputs are gathered on every process.
    batches = plan_batches([lengths[i] for i in todo], max_new_tokens, budget, batch_size, num_beams)
    queue = shard([[todo[j] for j in batch] for batch in batches])
    mine: dict[int, str] = {}
    bar = tqdm(total=len(done) + sum(map(len, queue)), initial=len(done),
               desc=desc if world == 1 else f"{desc} [rank {rank}/{world}]", unit="sent",
               disable=not progress or rank != 0, dynamic_ncols=True)
    monitor = None if bar.disable else BatchProgress(bar, eos_ids)
    was_training = model.training
    model.eval()
    try:
        while queue:
            batch = queue.pop(0)
            if monitor is not None:
                monitor.start(num_beams, f"reading {len(batch)} prompts of <= {max(lengths[i] for i in batch)} tokens")
            try:
                texts = _generate_batch(model, tokenizer, [encoded[i] for i in batch], config, pad_id, eos_ids,
                                        stop, device, monitor)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is retried
                if not _is_oom(e) or len(batch) == 1:
                    raise
                if monitor is not None:
                    monitor.undo()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                # Adapt: at most half this batch from now on, and re-plan everything not yet generated.
                batch_size = len(batch) // 2
                budget = None if budget is None else max(1, budget // 2)
                remaining = batch + [i for b in queue for i in b]
                plan = plan_batches([lengths[i] for i in remaining], max_new_tokens, budget, batch_size, num_beams)
                queue = [[remaining[j] for j in b] for b in plan]
                logger.warning("out of memory on a batch of %d; retrying with at most %d per batch",
                               len(batch), batch_size)
                continue
            outputs = [(first_line(t) if skip_leading_newlines else t.split("\n", 1)[0].strip())
                       if stop_at_newline else t.strip() for t in texts]
            if store:
                store.append(batch, outputs)
            mine.update(zip(batch, outputs))
            if monitor is not None:
                monitor.finish(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    for part in gather_objects(mine):
        done.update(part)
    return [done[i] for i in range(len(prompts))]


def _accepts_use_model_defaults(model) -> bool:
    import inspect

    return "use_model_defaults" in inspect.signature(model.generate).parameters


def _generate_batch(model, tokenizer, sequences, config, pad_id, eos_ids, stop, device, monitor=None) -> list[str]:
    """Run one left-padded batch through ``model.generate``; returns the raw continuations (up to EOS).
    ``monitor`` (a BatchProgress) is told about every decoding step."""
    import torch

    input_ids, attention_mask = left_pad(sequences, pad_id, device)
    kwargs = {}
    if _accepts_use_model_defaults(model):  # transformers >= 4.50 would refill our defaults (do_sample=False,
        kwargs["use_model_defaults"] = False  # ...) from the checkpoint's generation_config, e.g. sampling
    if stop is not None:
        stop.prompt_length = input_ids.shape[1]
    if stop is not None or monitor is not None:
        kwargs["stopping_criteria"] = _stopping_criteria(stop, monitor)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                **kwargs)
    generated = output[:, input_ids.shape[1]:].tolist()
    eos = set(eos_ids)
    trimmed = []
    for ids in generated:
        end = next((k for k, token in enumerate(ids) if token in eos), len(ids))
        trimmed.append(ids[:end])
    return tokenizer.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------------------------------- loading


def default_device() -> str:
    """cuda (this process's own GPU under `accelerate launch`/`torchrun`), else cpu."""
    import torch

    from xllama.distributed import local_device

    return local_device() or ("cuda" if torch.cuda.is_available() else "cpu")


def load_for_generation(spec: str, dtype: str | None = None, device: str | None = None):
    """Load (model, tokenizer) for evaluation: on a GPU in bfloat16 with SDPA attention, on a CPU in the
    checkpoint's dtype (float32 for GGUF). ``spec`` is a Hub id, a checkpoint folder or a .gguf file."""
    from xllama.modeling import load_model, load_tokenizer, resolve_model

    source = resolve_model(spec)
    device = device or default_device()
    if dtype is None:
        dtype = "bfloat16" if device.startswith("cuda") else "auto"
    tokenizer = load_tokenizer(source)
    try:
        model = load_model(source, dtype=dtype, device=device, attn_implementation="sdpa")
    except (ValueError, ImportError) as e:  # an architecture without SDPA support: let transformers choose
        if "sdpa" not in str(e).lower():
            raise
        model = load_model(source, dtype=dtype, device=device)
    model.eval()
    return model, tokenizer
