"""Loading models and tokenizers the Hugging Face way, from a Hub id, a local checkpoint or a GGUF file.

GGUF files are de-quantised to float by transformers (needs the ``gguf`` package). transformers' GGUF tokenizer
conversion gets the special tokens of some files wrong (SmolLM2: EOS read as id 1, a BOS added although the
file says not to), so we re-read them from the file's own metadata: a wrong EOS would teach the model to stop
on the wrong token. De-quantising is slow (tens of seconds for a 135M model), so a GGUF file is converted once
into a standard folder in a cache keyed by the file's SHA-256 ($XLLAMA_CACHE/gguf/, default ~/.cache/xllama) and
every later load reads that folder; ``xllama convert`` writes the same folder wherever the user asks.

A Hub id is looked up with ``local_files_only`` when the Hub cannot be reached (HF_HUB_OFFLINE, or no connection
to its host), so a mistyped id offline fails at once instead of after a minute of retries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xllama.errors import XllamaError
from xllama.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``path`` is a Hub id or a directory; ``gguf_file`` a file name inside it."""

    path: str
    gguf_file: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """Turn a user's model argument into a ModelSource; a missing local path is a clear error."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise XllamaError(f"GGUF model file not found: {path}")
        return ModelSource(str(path.parent), path.name)
    if path.is_dir():
        return ModelSource(str(path))
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.suffix in (".bin", ".safetensors")
    if looks_local or path.exists():
        raise XllamaError(f"model {spec!r} is not a directory or a .gguf file")
    return ModelSource(spec)  # a Hub id; reachability is checked when it is loaded


def _hub_error(source: ModelSource, err: Exception) -> XllamaError:
    offline = "" if hub_reachable() else (
        " The Hub is not reachable from here (HF_HUB_OFFLINE is set or there is no connection), so only the "
        "local Hugging Face cache was searched."
    )
    return XllamaError(
        f"model {str(source)!r} is neither a local path nor reachable on the Hugging Face Hub "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).{offline} Pass a local checkpoint "
        "directory or .gguf file, or check the Hub id and your network/HF_TOKEN."
    )


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the Hub's host refuses a TCP connection within 3 s. Behind an HTTP(S)
    proxy the answer is True: the proxy decides, and huggingface_hub's own errors follow."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def _hub_kwargs(source: ModelSource) -> dict[str, Any]:
    """``local_files_only`` for a Hub id while the Hub is unreachable (nothing for local folders and files)."""
    if source.gguf_file or Path(source.path).is_dir() or hub_reachable():
        return {}
    return {"local_files_only": True}


def _fix_gguf_special_tokens(tokenizer, gguf_path: Path) -> None:
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - transformers already needed gguf to get here
        raise XllamaError("reading a GGUF file needs the 'gguf' package: pip install 'xllama[gguf]'") from e
    fields = GGUFReader(str(gguf_path)).fields

    def scalar(key):
        field = fields.get(key)
        return None if field is None or not field.data else field.parts[field.data[0]].tolist()[0]

    tokens = tokenizer.convert_ids_to_tokens
    for attr, key in (("eos_token", "eos_token_id"), ("bos_token", "bos_token_id"), ("pad_token", "padding_token_id")):
        token_id = scalar(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, attr, tokens(int(token_id)))
    add_bos = scalar("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
        if hasattr(tokenizer, "update_post_processor"):
            tokenizer.update_post_processor()


def load_tokenizer(spec: str | ModelSource, **kwargs):
    """Load a fast tokenizer; sets a pad token (EOS) when the model has none, left padding off by default.
    A GGUF file's tokenizer is read from its converted folder (converted on first use)."""
    return _read_tokenizer(via_gguf_cache(spec), **kwargs)


def load_model(spec: str | ModelSource, dtype: str | None = "auto", device: str | None = None, **kwargs):
    """Load a causal LM. ``dtype``: 'auto' (the checkpoint's), 'float32', 'bfloat16' or 'float16'. A GGUF
    file is read from its converted folder (converted on first use)."""
    return _read_model(via_gguf_cache(spec), dtype, device, **kwargs)


def _read_tokenizer(source: ModelSource, **kwargs):
    from transformers import AutoTokenizer

    if source.gguf_file:
        # legacy=True is what LlamaTokenizerFast assumes anyway (it only matters when converting a slow
        # sentencepiece tokenizer, which a GGUF load never does); saying so silences its warning
        kwargs = {"legacy": True, **kwargs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs, **_hub_kwargs(source), **kwargs)
    except OSError as e:
        raise _hub_error(source, e) from None
    if source.gguf_file:
        _fix_gguf_special_tokens(tokenizer, Path(source.path) / source.gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise XllamaError(f"tokenizer of {source} has no EOS token; set one in its tokenizer_config.json")
    return tokenizer


def _read_model(source: ModelSource, dtype: str | None = "auto", device: str | None = None, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype in (None, "auto") else getattr(torch, dtype)
    if source.gguf_file and torch_dtype == "auto":
        torch_dtype = torch.float32  # de-quantised weights; "auto" would mean the quantised type
    kwargs = {**source.kwargs, **_hub_kwargs(source), **kwargs}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype, **kwargs)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(source.path, torch_dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise _hub_error(source, e) from None
    if source.gguf_file:
        _drop_gguf_quantizer(model)
    if device is not None:
        model.to(device)
    return model


def _drop_gguf_quantizer(model) -> None:
    """Forget the GGUF "quantizer" that transformers 5 attaches to a model it has de-quantised to float.

    transformers 4.x returns a plain float model. 5.x also leaves ``model.hf_quantizer`` (not serialisable, not
    trainable) and ``config.quantization_config = GgufConfig``, so ``save_pretrained`` refuses the trained model
    and a saved config.json would ask for a GGUF file on reload. Where the weights really are float, drop both.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or getattr(method, "value", method) != "gguf":
        return
    if any(type(module).__name__ == "GgufLinear" for module in model.modules()):
        return  # weights left packed in GGUF blocks (a GGUF kernel was available): genuinely quantised
    quantizer.remove_quantization_config(model)


def align_with_tokenizer(model, tokenizer) -> None:
    """Before saving ``model`` and ``tokenizer`` as one folder: make config.json and generation_config.json name
    the tokenizer's special tokens, turn the KV cache back on, and stop the tokenizer returning token_type_ids
    that the model does not take, so that plain transformers (``model.generate(**tokenizer(text))``, pipelines)
    works and stops where xllama does. A config built from defaults says bos 1 / eos 2 whatever the tokenizer;
    an EOS list that already holds the tokenizer's EOS (Llama 3 lists two) is kept."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    if "token_type_ids" in tokenizer.model_input_names and \
            "token_type_ids" not in inspect.signature(base.forward).parameters:
        names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names  # what save_pretrained writes
    eos = tokenizer.eos_token_id
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is None:
            continue
        current = getattr(config, "eos_token_id", None)
        if not (isinstance(current, (list, tuple)) and eos in current):
            config.eos_token_id = eos
        config.bos_token_id = tokenizer.bos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True


# --- GGUF: converted once into a standard folder ------------------------------------------------------------

GGUF_CACHE_FORMAT = 1  # bump when what convert_gguf writes changes: old cache entries are then not reused


def cache_root() -> Path:
    """$XLLAMA_CACHE, else $XDG_CACHE_HOME/xllama, else ~/.cache/xllama."""
    if os.environ.get("XLLAMA_CACHE"):
        return Path(os.environ["XLLAMA_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "xllama"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_dir(gguf_path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The cache folder of a GGUF file: named by its content (not its path) and the converting versions."""
    import transformers

    path = Path(gguf_path)
    sha256 = sha256 or file_sha256(path)
    return cache_root() / "gguf" / f"{sha256[:16]}-tf{transformers.__version__}-v{GGUF_CACHE_FORMAT}"


def convert_gguf(gguf_path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
                 sha256: str | None = None) -> Path:
    """De-quantise a GGUF file into a standard Hugging Face folder at ``out`` (written atomically): float32
    weights (model.safetensors), config.json and generation_config.json agreeing with the tokenizer, and the
    tokenizer with its special tokens as the GGUF file states them. ``from_pretrained(out)`` loads it."""
    source = resolve_model(gguf_path)
    if not source.gguf_file:
        raise XllamaError(f"{gguf_path} is not a .gguf file")
    path = Path(source.path) / source.gguf_file
    out = Path(out)
    if out.exists() and not overwrite:
        raise XllamaError(f"output directory {out} already exists (pass --overwrite to replace it)")
    log.info("converting %s to a Hugging Face folder, once (reading its tokenizer, 1/3)", path.name)
    tokenizer = _read_tokenizer(source)
    log.info("converting %s: de-quantising the weights (2/3)", path.name)
    model = _read_model(source, dtype="float32")
    if getattr(model, "hf_quantizer", None) is not None:
        raise XllamaError(f"{path.name}: transformers kept the weights quantised; they cannot be saved as a folder")
    align_with_tokenizer(model, tokenizer)
    log.info("converting %s: writing %s (3/3)", path.name, out)
    import transformers

    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "xllama_gguf.json", {"source": str(path.resolve()),
                                                     "sha256": sha256 or file_sha256(path),
                                                     "transformers": transformers.__version__,
                                                     "format": GGUF_CACHE_FORMAT})
    return out


def via_gguf_cache(spec: str | ModelSource) -> ModelSource:
    """``spec`` itself, except a GGUF file: its converted folder in the cache (made on first use; several
    processes starting together convert it once). Where the cache cannot be written the file is read directly."""
    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    if not source.gguf_file:
        return source
    path = Path(source.path) / source.gguf_file
    try:
        stat = path.stat()
        sha256 = _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        folder = gguf_cache_dir(path, sha256)
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(folder.with_name(folder.name + ".lock"), "w")  # noqa: SIM115 - held until converted
    except OSError as e:
        log.warning("cannot use the GGUF cache under %s (%s): converting %s in memory", cache_root(), e, path.name)
        return source
    with lock_file, _locked(lock_file):
        if (folder / "config.json").is_file():
            log.info("using %s, converted once from %s (delete it to convert again)", folder, path.name)
        else:
            try:
                convert_gguf(source, folder, overwrite=True, sha256=sha256)
            except (XllamaError, OSError) as e:
                log.warning("could not save %s as a folder (%s): reading it directly", path.name, e)
                return source
            log.info("saved the converted %s in %s: later loads take seconds (set XLLAMA_CACHE to move it)",
                     path.name, folder)
    return ModelSource(str(folder))


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """file_sha256, once per process for a file that has not changed (a command loads tokenizer and model)."""
    return file_sha256(path)


@contextlib.contextmanager
def _locked(f):
    import fcntl

    fcntl.flock(f, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)


def model_max_length(model) -> int | None:
    """The longest sequence the model's position embeddings allow, when the config says."""
    return getattr(model.config, "max_position_embeddings", None)


def decoder_layer_classes(model) -> set[str]:
    """Class names of the model's repeated blocks, used as FSDP's auto-wrap unit."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise XllamaError(f"{type(model).__name__} does not declare its decoder-layer class (_no_split_modules)")
    return names


def build_bpe_tokenizer(texts, vocab_size: int = 4096):
    """Train a small byte-level BPE tokenizer on ``texts``: lets the CPU quickstart run with no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(  # no progress: the Rust bars write to stdout (blank lines when piped)
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   model_input_names=["input_ids", "attention_mask"])


def build_model_from_config(config: dict, vocab_size: int, seed: int = 0):
    """A randomly initialised causal LM from a config dict ({'model_type': 'llama', 'hidden_size': 64, ...})."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type", "llama")
    hf_config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
