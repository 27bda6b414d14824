"""Loading models and tokenizers the Hugging Face way, from a Hub id, a local checkpoint or a GGUF file.

GGUF files are de-quantised to float by transformers (needs the ``gguf`` package). transformers' GGUF tokenizer
conversion gets the special tokens of some files wrong (SmolLM2: EOS read as id 1, a BOS added although the
file says not to), so we re-read them from the file's own metadata: a wrong EOS would teach the model to stop
on the wrong token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xllama.errors import XllamaError


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
    return XllamaError(
        f"model {str(source)!r} is neither a local path nor reachable on the Hugging Face Hub "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Pass a local checkpoint "
        "directory or .gguf file, or check the Hub id and your network/HF_TOKEN."
    )


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
    """Load a fast tokenizer; sets a pad token (EOS) when the model has none, left padding off by default."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs, **kwargs)
    except OSError as e:
        raise _hub_error(source, e) from None
    if source.gguf_file:
        _fix_gguf_special_tokens(tokenizer, Path(source.path) / source.gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise XllamaError(f"tokenizer of {source} has no EOS token; set one in its tokenizer_config.json")
    return tokenizer


def load_model(spec: str | ModelSource, dtype: str | None = "auto", device: str | None = None, **kwargs):
    """Load a causal LM. ``dtype``: 'auto' (the checkpoint's), 'float32', 'bfloat16' or 'float16'."""
    import torch
    from transformers import AutoModelForCausalLM

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    torch_dtype = dtype if dtype in (None, "auto") else getattr(torch, dtype)
    if source.gguf_file and torch_dtype == "auto":
        torch_dtype = torch.float32  # de-quantised weights; "auto" would mean the quantised type
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **source.kwargs, dtype=torch_dtype, **kwargs)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(source.path, **source.kwargs, torch_dtype=torch_dtype, **kwargs)
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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def build_model_from_config(config: dict, vocab_size: int, seed: int = 0):
    """A randomly initialised causal LM from a config dict ({'model_type': 'llama', 'hidden_size': 64, ...})."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type", "llama")
    hf_config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
