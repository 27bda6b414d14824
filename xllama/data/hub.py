"""Reading Hugging Face Hub datasets through the generic ``json``/``parquet`` builders.

``datasets>=4`` refuses Hub repos that still carry a loading script (FLORES-101, Bactrian-X, MLQA...), so
xllama never runs repo code: it reads the data files (or the Hub's parquet export, ``refs/convert/parquet``)
directly. ``XLLAMA_HUB_MIRROR`` points the same code at a local directory laid out as ``<mirror>/<repo>/<path>``:
that is how the tests exercise it offline, and how a cluster without internet uses a pre-downloaded copy.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from xllama.errors import XllamaError

PARQUET_EXPORT = "refs/convert/parquet"


def hub_url(repo: str, path: str, revision: str | None = None) -> str:
    """The URL (or mirror path) of a file in a Hub dataset repo."""
    mirror = os.environ.get("XLLAMA_HUB_MIRROR")
    if mirror:
        return os.path.join(mirror, repo, path)
    rev = f"@{quote(revision, safe='')}" if revision else ""
    return f"hf://datasets/{repo}{rev}/{path}"


def load_hub_files(builder: str, repo: str, path: str, revision: str | None = None, split: str = "train"):
    """Load ``path`` (a file or glob) of a Hub dataset repo with the ``json``/``parquet``/``csv`` builder."""
    from datasets import load_dataset

    url = hub_url(repo, path, revision)
    try:
        return load_dataset(builder, data_files={split: url}, split=split)
    except FileNotFoundError as e:
        raise XllamaError(f"no file {path!r} in Hub dataset {repo!r} ({url}): {e}") from None
    except (ConnectionError, OSError) as e:
        raise XllamaError(
            f"could not reach Hub dataset {repo!r} ({url}): {e}. Offline? Set XLLAMA_HUB_MIRROR to a local "
            "copy laid out as <mirror>/<repo>/<path>, or pass a local path instead of hf:..."
        ) from None


def load_hub_dataset(repo: str, config: str | None = None, split: str = "train", streaming: bool = False):
    """Load a plain (script-free) Hub dataset with ``load_dataset(repo, config)`` (an iterable with
    ``streaming``)."""
    from datasets import load_dataset

    mirror = os.environ.get("XLLAMA_HUB_MIRROR")
    try:
        if mirror:  # the mirror holds the repo's parquet export: <repo>/<config>/<split>/*.parquet
            files = os.path.join(mirror, repo, config or "default", split, "*.parquet")
            return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
        return load_dataset(repo, config, split=split, streaming=streaming)
    except (FileNotFoundError, ValueError) as e:
        raise XllamaError(f"could not load Hub dataset {repo!r} config {config!r} split {split!r}: {e}") from None
    except (ConnectionError, OSError) as e:
        raise XllamaError(f"could not reach Hub dataset {repo!r}: {e}. Offline? See XLLAMA_HUB_MIRROR.") from None


def stream_hub(location: str, split: str = "train"):
    """An iterator over the records of ``hf:owner/name[:config]`` (a script-free dataset) or
    ``hf:owner/name/FILES`` (a path or glob in the repo, read by the parquet/json builder), and its provenance."""
    from datasets import load_dataset

    repo, config, files = parse_files_location(location)
    if files is None:
        stream = load_hub_dataset(repo, config, split, streaming=True)
    else:
        builder = "parquet" if files.endswith(".parquet") else "json"
        url = hub_url(repo, files)
        try:
            stream = load_dataset(builder, data_files={split: url}, split=split, streaming=True)
        except (FileNotFoundError, ValueError) as e:
            raise XllamaError(f"could not load {location}: {e}") from None
        except (ConnectionError, OSError) as e:
            raise XllamaError(f"could not reach {location}: {e}. Offline? Set XLLAMA_HUB_MIRROR to a local copy "
                              "laid out as <mirror>/<repo>/<path>, or give a local path") from None
    return iter(stream), {"location": location, "hub": repo, "config": config, "files": files, "split": split}


def parse_files_location(location: str) -> tuple[str, str | None, str | None]:
    """'hf:owner/name[:config]' -> (repo, config, None); 'hf:owner/name/path/glob' -> (repo, None, glob)."""
    body = location[3:] if location.startswith("hf:") else location
    repo_part, _, config = body.partition(":")
    parts = repo_part.split("/")
    if not location.startswith("hf:") or len(parts) < 2 or not all(parts[:2]) or (len(parts) > 2 and config):
        raise XllamaError(f"bad Hub location {location!r}: expected hf:owner/name[:config] or hf:owner/name/FILES "
                          "(a path or glob inside the repo, e.g. hf:uonlp/CulturaX/de/*.parquet)")
    return "/".join(parts[:2]), (config or None), ("/".join(parts[2:]) or None)


def parse_location(location: str) -> tuple[str, str | None] | None:
    """'hf:owner/name[:config]' -> (repo, config); a local path -> None."""
    if not location.startswith("hf:"):
        return None
    body = location[3:]
    repo, _, config = body.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise XllamaError(f"bad Hub location {location!r}: expected hf:owner/name[:config]")
    return repo, (config or None)
