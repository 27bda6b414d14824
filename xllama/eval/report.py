"""Compare evaluation runs side by side: ``xllama eval report runs/base runs/x-llama [--markdown report.md]``.

Reads result files (or run folders holding ``results*.json``) and prints a Markdown table with one row per
(task, data, pair or language, metric) and one column per model; the best value of each row is bold
(lowest for ``off_target``). The metric signatures are listed under the table, so a reader can see the
numbers were computed the same way; rows whose columns used different signatures are flagged.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

from xllama.errors import XllamaError
from xllama.eval.results import EvalResults, find_result_files, read_results
from xllama.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"off_target"}
NOT_COMPARED = {"n"}  # shown, never bolded


def _qualifiers(r: EvalResults) -> dict[str, str]:
    """What besides the model can change a run's numbers, as column-label parts."""
    limit = r.extra.get("limit")
    split = r.extra.get("split")
    return {"prompt": r.prompt, "split": str(split or ""), "beams": f"beam {r.decoding.get('num_beams', 1)}",
            "max_new_tokens": f"max {r.decoding.get('max_new_tokens')} tokens",
            "limit": f"limit {limit}" if limit else "all"}


def _column_names(results: list[EvalResults]) -> list[str]:
    """One column per model. Runs of one model that would share rows (same task and data) but differ in
    prompt, split, beams, max_new_tokens or limit get one column each, labelled by what differs; two models
    given by the same name (two folders called 'final') are told apart by their run folder's name."""
    from xllama.eval.results import default_run_dir

    paths = defaultdict(set)
    for r in results:
        paths[r.model].add(r.extra.get("model_path") or r.model)
    labels = [r.model if len(paths[r.model]) == 1 else
              f"{r.model} [{default_run_dir(r.extra.get('model_path') or r.model).name}]" for r in results]
    runs = defaultdict(list)
    for label, r in zip(labels, results):
        runs[(label, r.task, r.data)].append(_qualifiers(r))
    names = []
    for label, r in zip(labels, results):
        group = runs[(label, r.task, r.data)]
        mine = _qualifiers(r)
        differ = [value for key, value in mine.items() if len({q[key] for q in group}) > 1]
        names.append(f"{label} ({', '.join(differ)})" if differ else label)
    return names


def build_report(paths: list[str | Path]) -> dict:
    """Collect the runs into ``{"columns", "rows", "signatures", "sources"}`` (the JSON the command writes)."""
    files: list[Path] = []
    for p in paths:
        for f in find_result_files(p):
            if f.resolve() not in [g.resolve() for g in files]:
                files.append(f)
    if not files:
        raise XllamaError("no result files given")
    results = [read_results(f) for f in files]
    names = _column_names(results)
    columns: list[str] = list(dict.fromkeys(names))
    cells: dict[tuple, dict[str, tuple[float, str, str]]] = {}  # row -> column -> (value, created, file)
    signatures: dict[tuple, dict[str, str]] = defaultdict(dict)  # (task, data, group, metric) -> column -> sig
    for file, name, r in zip(files, names, results):
        for group, metrics in r.scores.items():
            for metric, value in metrics.items():
                row = (r.task, r.data, group, metric)
                previous = cells.setdefault(row, {}).get(name)
                if previous is not None:
                    log.warning("%s and %s both score %s for %s; keeping the newer", previous[2], file,
                                "/".join(row), name)
                    if previous[1] > r.created:
                        continue
                cells[row][name] = (value, r.created, str(file))
                sig = r.signatures.get(group, {}).get(metric)
                if sig:
                    signatures[row][name] = sig
    rows = []
    for (task, data, group, metric), values in sorted(cells.items(), key=lambda kv: _row_order(kv[0])):
        row_sigs = signatures.get((task, data, group, metric), {})
        rows.append({
            "task": task, "data": data, "group": group, "metric": metric,
            "values": {c: values[c][0] for c in columns if c in values},
            "signature": sorted(set(row_sigs.values())),
        })
    all_sigs: dict[str, list[str]] = defaultdict(list)
    for (_, _, _, metric), by_column in signatures.items():
        for sig in by_column.values():
            if sig not in all_sigs[metric]:
                all_sigs[metric].append(sig)
    return {"columns": columns, "rows": rows, "signatures": dict(all_sigs), "sources": [str(f) for f in files]}


_METRIC_ORDER = ["bleu", "spbleu", "chrf", "comet", "bleurt", "off_target",
                 "squad_em", "squad_f1", "mlqa_em", "mlqa_f1", "contains", "n"]


def _row_order(row: tuple) -> tuple:
    task, data, group, metric = row
    rank = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
    return (task, data, group, rank, metric)


def _format(value: float, metric: str) -> str:
    return str(int(value)) if metric in NOT_COMPARED else f"{value:.2f}"


def to_markdown(report: dict) -> str:
    columns = report["columns"]
    lines = ["| task | data | pair/lang | metric | " + " | ".join(columns) + " |",
             "|" + " --- |" * 4 + " ---: |" * len(columns)]
    for row in report["rows"]:
        values = row["values"]
        best = None
        if len(set(values.values())) > 1 and row["metric"] not in NOT_COMPARED:  # all equal: no bold
            pick = min if row["metric"] in LOWER_IS_BETTER else max
            best = pick(values.values())
        cells = []
        for c in columns:
            if c not in values:
                cells.append("–")
                continue
            text = _format(values[c], row["metric"])
            cells.append(f"**{text}**" if best is not None and values[c] == best else text)
        metric = row["metric"] + (" ⚠" if len(row["signature"]) > 1 else "")
        lines.append(f"| {row['task']} | {row['data']} | {row['group']} | {metric} | " + " | ".join(cells) + " |")
    if report["signatures"]:
        lines += ["", "Signatures:"]
        for metric, sigs in report["signatures"].items():
            for sig in sigs:
                lines.append(f"- {metric}: `{sig}`")
    if any(len(row["signature"]) > 1 for row in report["rows"]):
        lines += ["", "⚠ the columns of this row were computed with different signatures: not comparable."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="result JSON files or run folders (results*.json)")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--markdown", help="write the Markdown table here")


def run(args: argparse.Namespace) -> int:
    report = build_report(args.runs)
    markdown = to_markdown(report)
    if args.out:
        atomic_write_json(args.out, report)
    if args.markdown:
        atomic_write_text(args.markdown, markdown)
    print(markdown, end="")
    return 0
