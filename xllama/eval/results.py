"""The result-file schema every evaluation writes and ``xllama eval report`` reads.

One JSON object per run (model x task x data), so that a number can always be traced back to what produced
it: the model, the data, the prompt, the decoding settings and each metric's signature. Example::

    {
      "schema": "xllama.eval.results/1",
      "task": "translation",
      "model": "out/x-llama-zh",
      "data": "flores101",
      "prompt": "alpaca",
      "decoding": {"num_beams": 1, "max_new_tokens": 256, "batch_size": 16},
      "scores": {"en-zh": {"bleu": 12.3, "chrf": 20.1, "off_target": 4.2, "n": 1012}},
      "signatures": {"en-zh": {"bleu": "nrefs:1|case:mixed|eff:no|tok:zh|smooth:exp|version:2.6.0"}},
      "created": "2025-01-01T12:00:00+00:00",
      "xllama_version": "0.1.0",
      "extra": {}
    }

``scores`` is keyed by translation direction ("en-zh") or QA language ("zh"), then by metric name; values
are numbers (``n`` counts the examples). ``signatures`` has the same nesting with strings. ``extra`` is free.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xllama import __version__
from xllama.errors import XllamaError
from xllama.io import atomic_write_json, read_json

SCHEMA = "xllama.eval.results/1"
TASKS = ("translation", "qa")


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class EvalResults:
    task: str  # "translation" | "qa"
    model: str  # what the user passed as --model (path or Hub id)
    data: str  # "flores101", "xquad", or a local path
    prompt: str  # prompt style: "alpaca" | "alma" | ...
    decoding: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # pair/lang -> metric -> value
    signatures: dict[str, dict[str, str]] = field(default_factory=dict)  # pair/lang -> metric -> signature
    created: str = field(default_factory=_now)
    xllama_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, obj: Any, source: str = "results") -> "EvalResults":
        validate_results(obj, source)
        fields = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        return cls(**fields)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_results(obj: Any, source: str = "results") -> None:
    """Raise XllamaError naming ``source`` and the offending key unless ``obj`` follows the schema."""
    if not isinstance(obj, dict):
        raise XllamaError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("schema", SCHEMA) != SCHEMA:
        raise XllamaError(f"{source}: unsupported schema {obj.get('schema')!r} (expected {SCHEMA!r})")
    for key in ("task", "model", "data", "prompt"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise XllamaError(f"{source}: key {key!r} must be a non-empty string, got {obj.get(key)!r}")
    if obj["task"] not in TASKS:
        raise XllamaError(f"{source}: key 'task' is {obj['task']!r}; expected one of {', '.join(TASKS)}")
    for key in ("decoding", "extra"):
        if key in obj and not isinstance(obj[key], dict):
            raise XllamaError(f"{source}: key {key!r} must be an object")
    scores = obj.get("scores")
    if not isinstance(scores, dict):
        raise XllamaError(f"{source}: key 'scores' must be an object (pair or language -> metric -> value)")
    for group, metrics in scores.items():
        if not isinstance(metrics, dict):
            raise XllamaError(f"{source}: scores[{group!r}] must be an object (metric -> value)")
        for metric, value in metrics.items():
            if not _is_number(value):
                raise XllamaError(f"{source}: scores[{group!r}][{metric!r}] must be a finite number, got {value!r}")
    signatures = obj.get("signatures", {})
    if not isinstance(signatures, dict):
        raise XllamaError(f"{source}: key 'signatures' must be an object (pair or language -> metric -> string)")
    for group, sigs in signatures.items():
        if not isinstance(sigs, dict) or not all(isinstance(v, str) for v in sigs.values()):
            raise XllamaError(f"{source}: signatures[{group!r}] must map metric names to strings")


def write_results(path: str | os.PathLike, results: EvalResults | dict | None = None, **fields: Any) -> Path:
    """Validate and atomically write one result file; pass an EvalResults, a dict, or the fields as keywords.

    >>> write_results("runs/x/results_flores101.json", task="translation", model="m", data="flores101",
    ...               prompt="alpaca", decoding={"num_beams": 1}, scores={"en-zh": {"bleu": 1.0}})
    """
    if results is None:
        results = EvalResults(**fields)
    elif fields:
        raise XllamaError("write_results: pass either a results object or keyword fields, not both")
    obj = results.to_dict() if isinstance(results, EvalResults) else {"schema": SCHEMA, **results}
    obj.setdefault("created", _now())
    obj.setdefault("xllama_version", __version__)
    validate_results(obj, str(path))
    atomic_write_json(path, obj)
    return Path(path)


def read_results(path: str | os.PathLike) -> EvalResults:
    """Read and validate one result file; errors name the file and the key."""
    return EvalResults.from_dict(read_json(path), str(path))


def result_file_name(task: str, data: str) -> str:
    """The conventional file name inside a run folder: ``results_translation_flores101.json``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(data).rstrip("/")).name or str(data)).strip("-") or "data"
    return f"results_{task}_{stem}.json"


def find_result_files(run: str | os.PathLike) -> list[Path]:
    """A result file itself, or every ``results*.json`` in a run directory (sorted)."""
    run = Path(run)
    if run.is_file():
        return [run]
    if run.is_dir():
        files = sorted(run.glob("results*.json"))
        if not files:
            raise XllamaError(f"run directory {run} holds no results*.json file")
        return files
    raise XllamaError(f"no such result file or run directory: {run}")
