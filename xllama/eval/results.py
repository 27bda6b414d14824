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

import hashlib
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


# ---------------------------------------------------------------------------------------------- naming
#
# Every evaluation writes under a run folder, by default runs/eval/<model slug>-<hash of the model's resolved
# path>, so two checkpoints both called ``final`` never share a folder. Inside it, file names carry the data,
# the prompt and whatever else changes the numbers (split, beams, limit), so a ``--limit`` run and a full run
# sit side by side. A file that already holds results of a different run is never replaced silently:
# ``check_results_file`` refuses (``--overwrite`` replaces).

GENERIC_NAMES = ("devtest", "dev", "test", "valid", "eval", "data")
_GENERIC_MODEL_DIR = re.compile(r"(final|best|last|latest|model|merged|adapter|hf|"
                                r"(checkpoint|step|epoch|iter)[-_]?\d*)", re.IGNORECASE)
DEFAULT_EVAL_ROOT = Path("runs") / "eval"
BATCHING_KEYS = ("batch_tokens", "batch_size")  # change speed, not outputs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")


def data_slug(data: str) -> str:
    """A file-name-safe short name for a data argument: 'flores101', or the path's last component (with its
    parent's when that is as generic as 'devtest': 'flores101-devtest')."""
    parts = [p for p in str(data).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    name = str(data)
    if len(parts) > 1 or "/" in name:
        name = parts[-1] if parts else "data"
        if name.lower() in GENERIC_NAMES and len(parts) > 1:
            name = f"{parts[-2]}-{name}"
    name = re.sub(r"\{([a-z]+)\}", lambda m: "" if m.group(1) == "lang" else m.group(1), name)
    return _safe(name) or "data"


def model_identity(spec: str | os.PathLike) -> str:
    """What tells models apart: the resolved absolute path of a local model (folder or .gguf), else the Hub id."""
    path = Path(str(spec)).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)


def model_slug(spec: str | os.PathLike) -> str:
    """A readable name for a model: 'a-final' for runs/a/final, 'SmolLM2-135M-Instruct.Q4_1' for a GGUF file,
    'Llama-2-7b-hf' for meta-llama/Llama-2-7b-hf."""
    parts = [p for p in model_identity(spec).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        return "model"
    name = parts[-1][: -len(".gguf")] if parts[-1].endswith(".gguf") else parts[-1]
    if _GENERIC_MODEL_DIR.fullmatch(name) and len(parts) > 1:
        name = f"{parts[-2]}-{name}"
    return _safe(name) or "model"


def default_run_dir(spec: str | os.PathLike, root: str | os.PathLike = DEFAULT_EVAL_ROOT) -> Path:
    """runs/eval/<model slug>-<8 hex of the model's identity>: one folder per model, so
    ``xllama eval report runs/eval/*`` compares models, and two ``final`` folders never collide."""
    digest = hashlib.blake2b(model_identity(spec).encode("utf-8"), digest_size=4).hexdigest()
    return Path(root) / f"{model_slug(spec)}-{digest}"


def result_stem(task: str, data: str, prompt: str | None = None, split: str | None = None,
                limit: int | None = None, num_beams: int = 1) -> str:
    """The name shared by a run's result file and its outputs folder: task, data, then only what differs
    from the defaults: ``translation_flores101_alpaca``, ``translation_flores101_alma_beam5_limit20``."""
    parts = [task, data_slug(data)]
    if prompt:
        parts.append(_safe(prompt))
    if split and split != "devtest":
        parts.append(_safe(split))
    if num_beams and num_beams > 1:
        parts.append(f"beam{num_beams}")
    if limit:
        parts.append(f"limit{limit}")
    return "_".join(parts)


def result_file_name(task: str, data: str, **qualifiers: Any) -> str:
    """The result file inside a run folder: ``results_<result_stem>.json`` (qualifiers: result_stem's)."""
    return f"results_{result_stem(task, data, **qualifiers)}.json"


def run_identity(record: dict) -> dict[str, Any]:
    """What must agree for two runs to share a result file: model, data, prompt, split, limit and every
    decoding setting that changes outputs (batching excluded)."""
    extra = record.get("extra") or {}
    identity = {"task": record.get("task"), "model": extra.get("model_path") or record.get("model"),
                "data": record.get("data"), "prompt": record.get("prompt"), "split": extra.get("split"),
                "limit": extra.get("limit")}
    for key, value in (record.get("decoding") or {}).items():
        if key not in BATCHING_KEYS:
            identity[f"decoding.{key}"] = value
    return identity


def check_results_file(path: str | os.PathLike, identity: dict[str, Any], overwrite: bool = False) -> None:
    """Refuse to write ``path`` when it holds the results of a different run. ``identity`` may be partial
    (what is known before the model is loaded): only its keys are compared."""
    path = Path(path)
    if overwrite or not path.is_file():
        return
    try:
        old = run_identity(read_results(path).to_dict())
    except XllamaError as e:
        raise XllamaError(f"{e}; pass --overwrite to replace it, or --out DIR for another folder") from None
    differ = [f"{key}: {old.get(key)!r} there, {value!r} now" for key, value in identity.items()
              if old.get(key) != value]
    if differ:
        raise XllamaError(f"{path} holds results of another run ({'; '.join(differ)}); refusing to overwrite "
                          "them: pass --out DIR for another folder, or --overwrite to replace them")


def save_results(path: str | os.PathLike, record: dict, overwrite: bool = False) -> Path:
    """Write ``record``; groups (pairs, languages) it lacks are carried over from an existing file of the same
    run (``run_identity``), so directions or languages can be added in later runs. A file of a different run
    is an error unless ``overwrite``."""
    path = Path(path)
    check_results_file(path, run_identity(record), overwrite)
    if path.is_file():
        try:
            old = read_results(path)
        except XllamaError:  # only reachable with overwrite
            old = None
        if old is not None and run_identity(old.to_dict()) == run_identity(record):
            outputs = record.setdefault("extra", {}).setdefault("outputs", {})
            for group, scores in old.scores.items():
                record["scores"].setdefault(group, scores)
                if group in old.signatures:
                    record["signatures"].setdefault(group, old.signatures[group])
                if group in old.extra.get("outputs", {}):
                    outputs.setdefault(group, old.extra["outputs"][group])
    return write_results(path, record)


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
