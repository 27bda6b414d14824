"""Readers for the evaluation sets: FLORES-101/200 devtest, SQuAD-format QA (XQuAD, MLQA), WMT/ALMA JSON.

Shared by evaluation, the alignment analysis and the mixer's contamination guard, so that "the FLORES
sentences" mean the same thing everywhere. Each reader takes a local path or a named Hub dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xllama.data.hub import PARQUET_EXPORT, load_hub_dataset, load_hub_files, parse_location
from xllama.errors import XllamaError
from xllama.io import read_json
from xllama.languages import get_language

# Named FLORES versions: the Hub repo whose parquet export holds `<code>/<split>/0000.parquet`, field `sentence`.
FLORES_HUB = {"flores101": "gsarti/flores_101", "flores200": "facebook/flores"}
# Named QA sets on the Hub (script-free parquet): XQuAD configs `xquad.<lang>`, MLQA inside google/xtreme.
QA_HUB = {"xquad": ("google/xquad", "xquad.{lang}", "validation"), "mlqa": ("google/xtreme", "MLQA.{lang}.{lang}", "test")}


def flores_code(version: str, lang: str) -> str:
    language = get_language(lang)
    return language.flores101 if version == "flores101" else language.flores200


def load_flores(data: str, lang: str, split: str = "devtest") -> list[str]:
    """The FLORES sentences of ``lang``: ``data`` is 'flores101'/'flores200' (Hub) or a local folder.

    A local folder may hold ``<code>.<split>`` files directly or under ``<split>/``, with FLORES-101 or
    FLORES-200 codes (``zho_simpl.devtest`` or ``zho_Hans.devtest``).
    """
    language = get_language(lang)
    if data in FLORES_HUB:
        local = os.environ.get("XLLAMA_DATA")
        if local and (Path(local) / data).is_dir():
            return load_flores(str(Path(local) / data), lang, split)
        code = flores_code(data, lang)
        ds = load_hub_files("parquet", FLORES_HUB[data], f"{code}/{split}/*.parquet", revision=PARQUET_EXPORT)
        return [str(s) for s in ds["sentence"]]
    root = Path(data)
    if not root.is_dir():
        raise XllamaError(f"FLORES data {data!r} is neither 'flores101', 'flores200' nor a directory")
    for folder in (root, root / split):
        for code in (language.flores101, language.flores200):
            path = folder / f"{code}.{split}"
            if path.is_file():
                lines = path.read_text(encoding="utf-8").split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                return lines
    raise XllamaError(
        f"no FLORES file for {language.name} in {root}: expected {language.flores101}.{split} or "
        f"{language.flores200}.{split} (directly or under {split}/)"
    )


def load_flores_pair(data: str, src: str, tgt: str, split: str = "devtest") -> tuple[list[str], list[str]]:
    source, target = load_flores(data, src, split), load_flores(data, tgt, split)
    if len(source) != len(target):
        raise XllamaError(f"FLORES {data}: {src} has {len(source)} lines but {tgt} has {len(target)}")
    return source, target


@dataclass
class QAExample:
    id: str
    context: str
    question: str
    answers: list[str] = field(default_factory=list)


def _squad_json(path: Path) -> list[QAExample]:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise XllamaError(f"{path}: not SQuAD v1.1 JSON (expected a top-level object with a 'data' list)")
    examples = []
    for a, article in enumerate(doc["data"]):
        for p, paragraph in enumerate(article.get("paragraphs") or []):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if "context" not in paragraph or "qas" not in paragraph:
                missing = "context" if "context" not in paragraph else "qas"
                raise XllamaError(f"{where}: missing field '{missing}'")
            for q, qa in enumerate(paragraph["qas"]):
                for key in ("id", "question", "answers"):
                    if key not in qa:
                        raise XllamaError(f"{where}.qas[{q}]: missing field '{key}'")
                answers = [ans["text"] for ans in qa["answers"] if "text" in ans]
                examples.append(QAExample(str(qa["id"]), paragraph["context"], qa["question"], answers))
    if not examples:
        raise XllamaError(f"{path}: no questions found")
    return examples


def load_squad(data: str, lang: str | None = None) -> list[QAExample]:
    """SQuAD-format QA examples from a local JSON file, a folder holding ``<name>.<lang>.json``, 'xquad' or
    'mlqa' (Hub, needs ``lang``), or ``hf:owner/name:config``."""
    if data in QA_HUB:
        if lang is None:
            raise XllamaError(f"QA set {data!r} needs a language")
        local = os.environ.get("XLLAMA_DATA")
        if local and (Path(local) / data).is_dir():
            return load_squad(str(Path(local) / data), lang)
        repo, config, split = QA_HUB[data]
        return _from_flat(load_hub_dataset(repo, config.format(lang=get_language(lang).code), split), data)
    hub = parse_location(data)
    if hub:
        return _from_flat(load_hub_dataset(hub[0], hub[1], "validation"), data)
    path = Path(data)
    if path.is_dir():
        if lang is None:
            raise XllamaError(f"QA folder {path} needs a language to pick a file")
        matches = sorted(path.glob(f"*.{get_language(lang).code}.json"))
        if not matches:
            raise XllamaError(f"no '*.{lang}.json' SQuAD file in {path}")
        path = matches[0]
    return _squad_json(path)


def _from_flat(ds, name: str) -> list[QAExample]:
    """The Hub's flattened SQuAD layout: id, context, question, answers{text, answer_start}."""
    missing = {"id", "context", "question", "answers"} - set(ds.column_names)
    if missing:
        raise XllamaError(f"{name}: missing fields {sorted(missing)} (got {ds.column_names})")
    return [QAExample(str(r["id"]), r["context"], r["question"], list(r["answers"]["text"])) for r in ds]


def load_wmt_json(path: str | os.PathLike, src: str, tgt: str) -> tuple[list[str], list[str]]:
    """WMT/ALMA JSON: an array (or JSONL) of ``{"translation": {"<src>": ..., "<tgt>": ...}}``."""
    from xllama.io import iter_jsonl

    path = Path(path)
    if path.suffix == ".jsonl":
        records = [(n, r) for n, r in iter_jsonl(path)]
    else:
        doc = read_json(path)
        if not isinstance(doc, list):
            raise XllamaError(f"{path}: expected a JSON array of {{'translation': {{...}}}} records")
        records = list(enumerate(doc, 1))
    sources, targets = [], []
    for n, record in records:
        pair = record.get("translation") if isinstance(record, dict) else None
        if not isinstance(pair, dict) or src not in pair or tgt not in pair:
            raise XllamaError(f"{path}: record {n}: expected {{'translation': {{'{src}': ..., '{tgt}': ...}}}}")
        sources.append(pair[src])
        targets.append(pair[tgt])
    return sources, targets


def load_aligned_text(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Two line-aligned plain-text files; different line counts are an error naming both files and counts."""
    sides = []
    for path in (Path(src_path), Path(tgt_path)):
        if not path.is_file():
            raise XllamaError(f"file not found: {path}")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        sides.append(lines)
    if len(sides[0]) != len(sides[1]):
        raise XllamaError(
            f"parallel files differ in length: {src_path} has {len(sides[0])} lines, {tgt_path} has {len(sides[1])}"
        )
    return sides[0], sides[1]
