"""Small I/O helpers every stage shares: atomic writes, JSON/JSONL reading with line numbers, content hashes.

Atomicity matters because runs are interrupted: a reader must see either the old file/directory or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from xllama.errors import XllamaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed.

    Nothing half-written is ever left at ``path``: a failed build leaves no output directory behind.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise XllamaError(f"output directory {path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise XllamaError(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise XllamaError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a JSONL file; a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise XllamaError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        yield from parse_jsonl_lines(path, f)


def parse_jsonl_lines(path, lines) -> Iterator[tuple[int, dict]]:
    """Parse JSONL ``lines`` (any iterable of strings: an open file, a gzip stream) read from ``path``."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise XllamaError(f"{path}: line {lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise XllamaError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def write_jsonl(path: str | os.PathLike, records) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def content_hash(items, digest_size: int = 16) -> str:
    """A stable hex hash over an iterable of JSON-serialisable items (order matters)."""
    h = hashlib.blake2b(digest_size=digest_size)
    for item in items:
        h.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def shared_dir() -> Path:
    """Where the shared real data and model live: $XLLAMA_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("XLLAMA_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared"


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus YAML 1.2's float syntax: an exponent without a dot (1e-5, 2E3)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, where: str | os.PathLike = "<string>") -> Any:
    """Parse YAML as a person means it: ``1e-5`` and ``2e-3`` are floats (as in YAML 1.2), not the strings
    PyYAML's YAML 1.1 rules make of them. A syntax error names ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise XllamaError(f"{where}: {line}malformed YAML ({problem})") from None


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with ``load_yaml``; a missing file or a syntax error names the file."""
    path = Path(path)
    if not path.is_file():
        raise XllamaError(f"file not found: {path}")
    return load_yaml(path.read_text(encoding="utf-8"), path)
