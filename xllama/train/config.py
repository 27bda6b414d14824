"""Training recipes: YAML files validated into dataclasses.

A recipe is the whole description of a run (model, data mix, optimisation, LoRA); the command line only picks a
recipe and overrides keys (``--set train.learning_rate=1e-5``), in the torchtitan spirit of configs, not flags.
Unknown keys and wrongly typed values are errors that name the key, because a typo in a recipe silently
falling back to a default costs a cluster run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xllama.errors import XllamaError
from xllama.languages import expand_languages
from xllama.io import load_yaml, read_yaml

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # Hub id, local checkpoint directory or .gguf file
    init: dict | None = None  # or: a random model from a transformers config dict (quickstart, benchmarks)
    tokenizer: str | None = None  # defaults to name_or_path; "bpe" trains a small BPE on the mix (quickstart)
    tokenizer_vocab_size: int = 4096  # for tokenizer: bpe
    attn_implementation: str = "auto"  # auto | flash_attention_2 | flex_attention | sdpa | eager


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int | None = None  # stop early (smoke runs); the schedule still follows `epochs` unless set
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"  # any transformers scheduler name: cosine, linear, constant_with_warmup, inverse_sqrt
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    global_batch_size: int = 128  # examples per optimiser step, over all ranks
    micro_batch_tokens: int = 8192  # tokens per packed forward pass per rank (>= max_length)
    max_length: int = 512
    precision: str = "bf16"  # bf16 (bf16 compute, fp32 master weights) | fp32
    reduce_dtype: str = "float32"  # gradient reduction across ranks (FSDP2): float32 | bfloat16
    gradient_checkpointing: bool = False  # activation checkpointing of every decoder layer
    compile: bool = False  # torch.compile each decoder layer
    loss_chunk_tokens: int = 4096  # target tokens per chunk of the LM head + loss (never all fp32 logits at once)
    cpu_offload: bool = False  # FSDP2: parameters, gradients and optimizer state in CPU memory
    seed: int = 42
    save_every: int = 500  # optimiser steps between checkpoints (0: only at the end / on SIGTERM)
    keep_checkpoints: int = 2  # the most recent N step checkpoints are kept (>= 1)
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    requires_gpu: bool = False
    report_to: list = field(default_factory=list)  # experiment trackers: tensorboard, wandb, mlflow
    save_dtype: str = "auto"  # dtype of RUN/final: auto (the base model's) | float32 | bfloat16 | float16


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = True  # save a merged full model next to the adapter


@dataclass
class CpoConfig:
    """Task alma-cpo (ALMA-R): L = -log sigmoid(beta * (log p(y_w|x) - log p(y_l|x))) + nll_weight * NLL(y_w|x)."""

    beta: float = 0.1
    nll_weight: float = 1.0


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    task: str = "instruct"  # instruct (Alpaca prompt, loss on the response) | alma-monolingual | alma-parallel
    model: ModelConfig = field(default_factory=ModelConfig)
    data: dict = field(default_factory=dict)  # a data-mix spec (see xllama.data.mix.MixSpec), or {path: MIX_DIR}
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    cpo: CpoConfig = field(default_factory=CpoConfig)  # read by task alma-cpo only
    launch: dict = field(default_factory=dict)  # how to launch at scale (documentation: accelerate config etc.)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TRACKERS = ("tensorboard", "wandb", "mlflow")
TASKS = ("instruct", "alma-monolingual", "alma-parallel", "alma-cpo")
CHOICES = {
    "train.precision": ("bf16", "fp32"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.reduce_dtype": ("float32", "bfloat16"),
    "train.save_dtype": ("auto", "float32", "bfloat16", "float16"),
    "task": TASKS,
    "model.attn_implementation": ("auto", "flash_attention_2", "flex_attention", "sdpa", "eager"),
}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = origin or tp
    if expected is typing.Any or isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise XllamaError(f"{where}: expected {getattr(expected, '__name__', expected)}, got {value!r}")


def from_dict(cls, data: Any, where: str, section: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types; errors read
    ``WHERE: train.learning_rate: expected float, got 'fast'`` (``where``: the file; ``section``: the key path)."""
    at = f"{where}: {section}" if section else where
    if not isinstance(data, dict):
        raise XllamaError(f"{at}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise XllamaError(f"{at}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for key, value in data.items():
        path = f"{section}.{key}" if section else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, where, path)
        else:
            kwargs[key] = _check_type(value, tp, f"{where}: {path}")
    obj = cls(**kwargs)
    return obj


def validate(recipe: Recipe, where: str) -> Recipe:
    for key, choices in CHOICES.items():
        obj = recipe
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise XllamaError(f"{where}: {key}: {obj!r} is not one of {', '.join(choices)}")
    t = recipe.train
    positive = {"global_batch_size": t.global_batch_size, "micro_batch_tokens": t.micro_batch_tokens,
                "max_length": t.max_length, "learning_rate": t.learning_rate, "epochs": t.epochs,
                "loss_chunk_tokens": t.loss_chunk_tokens}
    for key, value in positive.items():
        if value <= 0:
            raise XllamaError(f"{where}: train.{key}: must be positive, got {value}")
    if t.micro_batch_tokens < t.max_length:
        raise XllamaError(
            f"{where}: train.micro_batch_tokens ({t.micro_batch_tokens}) must be >= train.max_length ({t.max_length})"
        )
    if not 0 <= t.warmup_ratio < 1:
        raise XllamaError(f"{where}: train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if t.keep_checkpoints < 1:
        raise XllamaError(f"{where}: train.keep_checkpoints: must be >= 1 (the number of most recent checkpoints "
                          f"kept), got {t.keep_checkpoints}; train.save_every: 0 saves only on interruption")
    unknown = sorted(set(t.report_to) - set(TRACKERS))
    if unknown:
        raise XllamaError(f"{where}: train.report_to: unknown tracker(s) {', '.join(map(str, unknown))}; "
                          f"expected a list of {', '.join(TRACKERS)}")
    if t.max_steps is not None and t.max_steps <= 0:
        raise XllamaError(f"{where}: train.max_steps: must be positive, got {t.max_steps}")
    if (recipe.model.name_or_path is None) == (recipe.model.init is None):
        raise XllamaError(f"{where}: model: set exactly one of name_or_path (a pretrained model) or init (a config)")
    if recipe.model.tokenizer is None and recipe.model.name_or_path is None:
        raise XllamaError(f"{where}: model.tokenizer: a model built from `init` needs a tokenizer (a path, or 'bpe')")
    if recipe.cpo.beta <= 0 or recipe.cpo.nll_weight < 0:
        raise XllamaError(f"{where}: cpo: beta must be positive and nll_weight >= 0, got beta {recipe.cpo.beta}, "
                          f"nll_weight {recipe.cpo.nll_weight}")
    return recipe


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise XllamaError(f"recipe file not found: {path}")
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise XllamaError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(known)} (or a path to a .yaml)")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.learning_rate=1e-5' -> (['train', 'learning_rate'], 1e-05); the value is parsed as YAML (1e-5 is a
    float, as in recipe files)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise XllamaError(f"bad --set {text!r}: expected KEY=VALUE such as train.learning_rate=1e-5")
    return key.strip().split("."), load_yaml(value, f"--set {text}")


def _set(tree: dict, keys: list[str], value: Any, text: str) -> None:
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise XllamaError(f"bad --set {text!r}: {k} is not a section")
    node[keys[-1]] = value


def load_recipe(name_or_path: str, overrides: list[str] = (), languages: list[str] | None = None) -> Recipe:
    """Load, override, expand '{lang}' and validate a recipe."""
    path = resolve_recipe_path(name_or_path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise XllamaError(f"{path}: a recipe must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        _set(raw, keys, value, text)
    if languages:
        data = raw.setdefault("data", {})
        if "path" not in data:
            data["languages"] = list(languages)
            if raw.get("task", "instruct") == "instruct" and data.get("mix") in (None, "x-llama", "m-llama"):
                data["mix"] = "x-llama" if len(languages) == 1 else "m-llama"
        raw["data"] = expand_languages(data, languages)
    raw.setdefault("name", path.stem)
    return validate(from_dict(Recipe, raw, where=str(path)), where=str(path))
