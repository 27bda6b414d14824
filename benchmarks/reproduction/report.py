"""RESULTS.md for the reproduction study: tables from the collected unit results, the paper's claims, verdicts.

Every number comes from a result file an xllama command wrote (results/<unit>/...); this module only reads,
compares and formats. A verdict follows a rule stated next to it, so a reader can check it against the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from xllama.io import atomic_write_text

PAPER = "Zhu et al. 2023, Extrapolating Large Language Models to Non-English by Aligning Languages"
QA_METRICS = [("squad_em", "EM"), ("squad_f1", "F1"), ("mlqa_em", "MLQA-EM"), ("contains", "contains")]


# --- reading -------------------------------------------------------------------------------------------------

def load_units(results: Path) -> dict[str, dict]:
    """unit name -> {record, translation scores, qa scores, off-target, alignment, ...} for every finished unit."""
    units = {}
    if not results.is_dir():
        return units
    for folder in sorted(results.iterdir()):
        if not (folder / "unit.json").is_file():
            continue
        record = json.loads((folder / "unit.json").read_text(encoding="utf-8"))
        unit = {"record": record, "folder": folder, "translation": {}, "qa": {}, "off_target": {}}
        for path in sorted(folder.glob("results_translation_*.json")):
            unit["translation"].update(json.loads(path.read_text(encoding="utf-8"))["scores"])
        for path in sorted(folder.glob("results_qa_*.json")):
            unit["qa"].update(json.loads(path.read_text(encoding="utf-8"))["scores"])
        if (folder / "off_target.json").is_file():
            unit["off_target"] = json.loads((folder / "off_target.json").read_text(encoding="utf-8"))
        if (folder / "align" / "alignment.json").is_file():
            unit["alignment"] = json.loads((folder / "align" / "alignment.json").read_text(encoding="utf-8"))
        for name in ("manifest.json", "train/summary.json", "train/tokenized.json"):
            if (folder / name).is_file():
                unit[name.split("/")[-1].removesuffix(".json")] = json.loads((folder / name).read_text(encoding="utf-8"))
        units[folder.name] = unit
    return units


def _get(unit: dict | None, table: str, group: str, metric: str) -> float | None:
    if unit is None or unit["record"]["status"] != "ok":
        return None
    value = unit[table].get(group, {}).get(metric)
    return None if value is None else float(value)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# --- verdict rules -------------------------------------------------------------------------------------------

def better(a: float | None, b: float | None) -> bool | None:
    """a > b, or None when either is missing."""
    return None if a is None or b is None else a > b


def comparable(a: float | None, b: float | None, points: float = 1.0, relative: float = 0.10) -> bool | None:
    """a is comparable to (or better than) b: a >= b - max(points, relative * |b|)."""
    if a is None or b is None:
        return None
    return a >= b - max(points, relative * abs(b))


def verdict(checks: list[bool | None]) -> str:
    """reproduced (all hold), partly (some), not reproduced (none), or not measured."""
    known = [c for c in checks if c is not None]
    if not known:
        return "not measured"
    if len(known) < len(checks):
        return f"incomplete ({sum(known)}/{len(known)} measured checks hold)"
    if all(known):
        return "reproduced"
    return "partly reproduced" if any(known) else "not reproduced"


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 points or constant data."""
    if len(xs) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / math.sqrt(vx * vy)


def retrieval_curve(alignment: dict, pair: str, centered: bool = True) -> list[float]:
    """Mean of both retrieval directions per layer, for the first model in an alignment.json."""
    layers = alignment["models"][0]["pairs"][pair]["layers_centered" if centered else "layers"]
    return [(r["retrieval_src_to_tgt"] + r["retrieval_tgt_to_src"]) / 2 for r in layers]


def peak_layer(curve: list[float]) -> int:
    return max(range(len(curve)), key=lambda i: curve[i])


def is_middle(layer: int, num_layers: int) -> bool:
    """Middle = neither the first nor the last quarter of the layers (layer 0 is the embedding output)."""
    return num_layers * 0.25 <= layer <= num_layers * 0.75


# --- the claims ----------------------------------------------------------------------------------------------

def claims(units: dict, study: dict) -> list[dict]:
    """Each of the paper's claims with its checks (name, value a, value b, holds?) and a verdict."""
    out = []

    def unit(name):
        return units.get(name)

    # 1. x-model beats the Alpaca model on non-English QA and translation (its own language), one claim per
    #    language: zh is the study's priority 1 (one GPU window), de comes later.
    for model, lang in (("x-zh", "zh"), ("x-de", "de")):
        checks = []
        for label, table, group, metric in ((f"en-{lang} BLEU", "translation", f"en-{lang}", "bleu"),
                                            (f"{lang}-en BLEU", "translation", f"{lang}-en", "bleu"),
                                            (f"en-{lang} chrF++", "translation", f"en-{lang}", "chrf"),
                                            (f"{lang}-en chrF++", "translation", f"{lang}-en", "chrf"),
                                            (f"XQuAD {lang} EM", "qa", lang, "squad_em"),
                                            (f"XQuAD {lang} F1", "qa", lang, "squad_f1"),
                                            (f"XQuAD {lang} contains", "qa", lang, "contains")):
            a, b = _get(unit(model), table, group, metric), _get(unit("alpaca"), table, group, metric)
            checks.append({"check": f"{model} vs alpaca: {label}", "a": a, "b": b, "holds": better(a, b)})
        out.append({"claim": f"CoIT ({lang}): {model} beats the Alpaca model on {lang} translation and QA",
                    "rule": f"each check: {model}'s score > the alpaca model's (same recipe, same token budget)",
                    "checks": checks})

    # 2. The m-model is comparable to the x-models.
    checks = []
    for model, lang in (("x-zh", "zh"), ("x-de", "de")):
        for label, table, group, metric in ((f"en-{lang} BLEU", "translation", f"en-{lang}", "bleu"),
                                            (f"{lang}-en BLEU", "translation", f"{lang}-en", "bleu"),
                                            (f"XQuAD {lang} EM", "qa", lang, "squad_em")):
            a, b = _get(unit("m-zh-de-ru"), table, group, metric), _get(unit(model), table, group, metric)
            checks.append({"check": f"m-zh-de-ru vs {model}: {label}", "a": a, "b": b, "holds": comparable(a, b)})
    out.append({"claim": "MuIT: one multilingual model is comparable to the per-language x-models",
                "rule": "each check: m-model >= x-model - max(1 point, 10% of the x-model's score)",
                "checks": checks})

    # 3. Translation quality rises with the number of pairs.
    sc = study["scaling"]
    checks = []
    for lang in sc["languages"]:
        points = []
        for size in sc["sizes"]:
            u = unit(f"scale-{lang}-{size}")
            value = _get(u, "translation", f"en-{lang}", sc["metric"])
            if value is not None and "manifest" in u:
                points.append((pair_sizes(u["manifest"], lang)["used"], value))
        rho = spearman([p[0] for p in points], [p[1] for p in points]) if len(points) == len(sc["sizes"]) else None
        checks.append({"check": f"en-{lang}: Spearman rank correlation of pairs and {sc['metric'].upper()}",
                       "a": rho, "b": 0.0, "holds": None if rho is None else rho > 0.5})
    out.append({"claim": "Scaling: translation quality rises with the amount of parallel data",
                "rule": "each language: Spearman correlation of pair count and score > 0.5 over the scaling runs",
                "checks": checks})

    # 4. The optimised split beats the uniform split (measured).
    opt, uni = unit("alloc-optimised"), unit("alloc-uniform")
    a, b = _mean_pairs(opt, sc), _mean_pairs(uni, sc)
    out.append({"claim": "Allocation: the fitted laws' split of a pair budget beats the uniform split",
                "rule": f"measured mean en->X {sc['metric'].upper()} on FLORES: optimised > uniform",
                "checks": [{"check": "optimised vs uniform (measured mean)", "a": a, "b": b, "holds": better(a, b)}]})

    # 5. Alignment: strongest in the middle layers, and tuning on non-English data raises it.
    checks = []
    base = unit("base")
    for name in study["alignment"]["models"]:
        u = unit(name)
        if u is None or "alignment" not in u:
            checks.append({"check": f"{name}: en-zh peak layer in the middle", "a": None, "b": None, "holds": None})
            continue
        curve = retrieval_curve(u["alignment"], "en-zh")
        layer, layers = peak_layer(curve), len(curve) - 1
        checks.append({"check": f"{name}: en-zh centred retrieval peaks at layer {layer} of {layers}",
                       "a": curve[layer], "b": None, "holds": is_middle(layer, layers)})
    for name in study["alignment"]["models"]:
        if name == "base":
            continue
        u = unit(name)
        if u is None or "alignment" not in u or base is None or "alignment" not in base:
            checks.append({"check": f"{name} vs base: peak en-zh retrieval", "a": None, "b": None, "holds": None})
            continue
        a, b = max(retrieval_curve(u["alignment"], "en-zh")), max(retrieval_curve(base["alignment"], "en-zh"))
        checks.append({"check": f"{name} vs base: peak en-zh centred retrieval", "a": a, "b": b, "holds": a >= b})
    out.append({"claim": "Alignment: en-X representations align best in the middle layers, and CoIT/MuIT raise it",
                "rule": "peak layer within the middle half of the stack; trained model's peak >= the base model's",
                "checks": checks})
    for c in out:
        c["verdict"] = verdict([ch["holds"] for ch in c["checks"]])
    return out


def pair_sizes(manifest: dict, lang: str) -> dict:
    """The en-X pairs' size entry of a mix manifest: requested, available (after cleaning) and used."""
    for key in (f"translation_en-{lang}", f"translation_{lang}-en"):
        if key in manifest.get("sizes", {}):
            return manifest["sizes"][key]
    raise ValueError(f"mix manifest has no size entry for en-{lang} pairs (keys: {sorted(manifest.get('sizes', {}))})")


def _mean_pairs(unit: dict | None, sc: dict) -> float | None:
    values = [_get(unit, "translation", f"en-{lang}", sc["metric"]) for lang in sc["languages"]]
    return None if any(v is None for v in values) else sum(values) / len(values)


# --- the document --------------------------------------------------------------------------------------------

def write_report(study: dict, results: Path, out: Path) -> None:
    units = load_units(results)
    text = render(study, units, results)
    atomic_write_text(out, text)
    print(f"wrote {out} ({len(units)} units)")


def render(study: dict, units: dict, results: Path) -> str:
    ev = study["evaluation"]
    main = [n for n in study["models"] if n in units]
    lines = [
        "# Reproduction study: x-LLaMA / m-LLaMA claims at small scale",
        "",
        f"The claims of {PAPER}, re-tested with xllama's own commands on SmolLM2-135M-Instruct (an English-only "
        "135M Llama, de-quantised from the shared Q4_1 GGUF) instead of LLaMA-7B. Written by "
        "`python benchmarks/reproduction/run_study.py report` from `benchmarks/reproduction/results/`; the study's "
        "sizes are in `study.yaml`, the training recipe in `recipe.yaml`, the procedure in `README.md`.",
        "",
    ]
    lines += _setup(study, units)
    lines += ["## Claims and verdicts", ""]
    for c in claims(units, study):
        lines += [f"### {c['claim']}", "", f"**Verdict: {c['verdict']}.** Rule: {c['rule']}.", "",
                  "| check | value | compared with | holds |", "|---|---|---|---|"]
        for ch in c["checks"]:
            holds = "–" if ch["holds"] is None else ("yes" if ch["holds"] else "no")
            lines.append(f"| {ch['check']} | {_fmt(ch['a'], 2)} | {_fmt(ch['b'], 2)} | {holds} |")
        lines.append("")
    lines += ["## Translation (FLORES-101 devtest)", "",
              f"First {ev['translation_lines']} lines of each direction, greedy decoding, the x-LLM Alpaca prompt. "
              "BLEU (sacreBLEU, tokenizer per target: zh for Chinese, 13a otherwise) / chrF++ / off-target % "
              "(lingua, scored afterwards on CPU). spBLEU is not reported: the FLORES SentencePiece model is not "
              "available offline.", ""]
    pairs = [p for lang in ev["translation_languages"] for p in (f"en-{lang}", f"{lang}-en")]
    lines += ["| model | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for name in main:
        u = units[name]
        cells = []
        for p in pairs:
            b, c = _get(u, "translation", p, "bleu"), _get(u, "translation", p, "chrf")
            off = u["off_target"].get(p, {}).get("off_target")
            cells.append(f"{_fmt(b)} / {_fmt(c)} / {_fmt(off, 0)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## XQuAD (zero-shot)", "",
              f"First {ev['qa_questions']} questions per language. EM / F1 (SQuAD normalisation) / MLQA-EM (MLQA's "
              "language-aware normalisation) / contains (x-LLM: the gold answer appears in the output).", ""]
    langs = ev["qa_languages"]
    lines += ["| model | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for name in main:
        u = units[name]
        cells = [" / ".join(_fmt(_get(u, "qa", lang, m)) for m, _ in QA_METRICS) for lang in langs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""] + _scaling(study, units, results) + _alignment(study, units) + _runs(study, units)
    return "\n".join(lines) + "\n"


def _setup(study: dict, units: dict) -> list[str]:
    envs = {json.dumps(u["record"].get("environment", {}), sort_keys=True) for u in units.values()}
    gpu_s = sum(p["wall_s"] for u in units.values() for p in u["record"]["phases"] if p.get("gpu"))
    wall_s = sum(p["wall_s"] for u in units.values() for p in u["record"]["phases"])
    lines = ["## Setup", ""]
    if not units:
        return lines + ["No unit has run yet: every table below is empty. Run the study (README.md) and collect.", ""]
    lines.append("- Machines: " + "; ".join(
        ", ".join(f"{k} {v}" for k, v in json.loads(e).items()) for e in sorted(envs)))
    lines.append(f"- Time: {wall_s / 60:.1f} min of phase wall time in {len(units)} units, of which "
                 f"{gpu_s / 60:.1f} min in the phases that use the accelerator (training, generation, alignment); "
                 "machine start-up and transfers not included.")
    lines.append(f"- Instructions per Alpaca language: {study['instructions_per_language']} (sampled by "
                 f"`xllama data build`, seed {study['pools']['seed']}, from pools of "
                 + ", ".join(f"{k} {v}" for k, v in study["pools"]["instructions"].items())
                 + " records); pairs: the ALMA human-written en-X training pairs, FLORES-101 devtest and XQuAD "
                 "removed by the contamination guard.")
    recipe = next((u for u in units.values() if (u["folder"] / "train" / "config.yaml").is_file()), None)
    if recipe is not None:
        import yaml

        t = yaml.safe_load((recipe["folder"] / "train" / "config.yaml").read_text(encoding="utf-8"))["train"]
        epochs = "epochs per unit (table below)" if study.get("token_budget") else f"{t['epochs']:g} epochs"
        lines.append(f"- Training (every run): {epochs}, lr {t['learning_rate']:g} {t['lr_scheduler']}, "
                     f"warm-up {t['warmup_ratio']:g}, global batch {t['global_batch_size']} examples, max length "
                     f"{t['max_length']}, {t['precision']}, seed {t['seed']}, loss on the response only.")
    if study.get("token_budget"):
        lines.append(f"- Token budget of every tuned main model: {study['token_budget']:,} training tokens (prompt + "
                     "response); epochs = budget / the mix's tokens per epoch (`xllama train --dry-run`).")
    lines += ["", "| unit | examples (by source) | removed by the guard | tokens per epoch | epochs | steps | "
              "tokens trained | tokens/s | wall (train) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, u in units.items():
        manifest, summary = u.get("manifest"), u.get("summary")
        if manifest is None or summary is None:
            continue
        sources = ", ".join(f"{k} {v}" for k, v in manifest.get("by_source", {}).items())
        tps = _mean_tokens_per_s(u["folder"])
        train_wall = next((p["wall_s"] for p in u["record"]["phases"] if p["name"] == "train"), None)
        budget = u["record"].get("budget", {})
        per_epoch = budget.get("tokens_per_epoch")
        epochs = budget.get("epochs") or _recipe_epochs(u["folder"])
        lines.append(f"| {name} | {manifest.get('examples', '?')} ({sources}) | "
                     f"{manifest.get('removed', {}).get('contamination', '?')} | "
                     f"{'–' if per_epoch is None else f'{per_epoch:,}'} | {_fmt(epochs, 3)} | {summary['steps']} | "
                     f"{_tokens_trained(u['folder']):,} | {_fmt(tps, 0)} | {_fmt(train_wall, 0)} s |")
    lines.append("")
    failed = [n for n, u in units.items() if u["record"]["status"] != "ok"]
    if failed:
        lines += ["Failed units (their rows are empty): " + ", ".join(
            f"{n} ({units[n]['record'].get('failed_phase')})" for n in failed), ""]
    return lines


def _tokens_trained(folder: Path) -> int:
    path = folder / "train" / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(json.loads(line)["tokens"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _recipe_epochs(folder: Path) -> float | None:
    path = folder / "train" / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    return float(yaml.safe_load(path.read_text(encoding="utf-8"))["train"]["epochs"])


def _mean_tokens_per_s(folder: Path) -> float | None:
    path = folder / "train" / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[1:] if len(rows) > 1 else rows  # the first step includes warm-up (allocation, kernels)
    return sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows) if rows else None


def _scaling(study: dict, units: dict, results: Path) -> list[str]:
    sc = study["scaling"]
    lines = ["## Scaling with parallel data", "",
             f"Each point is a real run: {sc['instructions_en']} English Alpaca examples plus N en->X pairs, scored "
             f"on the first {sc['eval_lines']} FLORES-101 devtest lines (en->X).", "",
             "| language | " + " | ".join(str(s) for s in sc["sizes"]) + " |", "|---|" + "---|" * len(sc["sizes"])]
    for lang in sc["languages"]:
        cells = []
        for size in sc["sizes"]:
            u = units.get(f"scale-{lang}-{size}")
            n = pair_sizes(u["manifest"], lang)["used"] if u is not None and "manifest" in u else None
            b, c = _get(u, "translation", f"en-{lang}", "bleu"), _get(u, "translation", f"en-{lang}", "chrf")
            cells.append("–" if b is None else f"{_fmt(b)} / {_fmt(c)} (n={n})")
        lines.append(f"| en-{lang} BLEU / chrF++ | " + " | ".join(cells) + " |")
    lines.append("")
    folder = results / "scaling"
    if (folder / "fit.json").is_file():
        fit = json.loads((folder / "fit.json").read_text(encoding="utf-8"))
        lines += [f"Fit (`xllama scaling fit`, {sc['metric'].upper()}): form **{fit['form']}** ({fit['selection']}).",
                  "", "| language | parameters (95% bootstrap interval) |", "|---|---|"]
        for lang, c in fit["curves"].items():
            params = ", ".join(f"{k} = {v:.3g}" + (f" [{c['ci95'][k][0]:.3g}, {c['ci95'][k][1]:.3g}]"
                                                   if "ci95" in c else "") for k, v in c["params"].items())
            lines.append(f"| {lang} | {params} |")
        lines += ["", "![scaling fit](results/scaling/fit.png)", ""]
    if (folder / "allocation.json").is_file():
        alloc = json.loads((folder / "allocation.json").read_text(encoding="utf-8"))
        opt, uni = units.get("alloc-optimised"), units.get("alloc-uniform")
        lines += [f"Allocation of {alloc['budget']} pairs (`xllama scaling allocate`, objective {alloc['objective']}); "
                  f"both splits trained and scored on the first {sc['allocation_eval_lines']} devtest lines:", "",
                  "| split | " + " | ".join(f"{l} pairs" for l in sc["languages"]) + " | predicted mean | measured "
                  "mean | " + " | ".join(f"en-{l}" for l in sc["languages"]) + " |",
                  "|---|" + "---|" * (2 * len(sc["languages"]) + 2)]
        for label, split, predicted, u in (("optimised", alloc["allocation"], alloc["predicted"], opt),
                                           ("uniform", alloc["uniform"]["allocation"], alloc["uniform"]["predicted"],
                                            uni)):
            mean_pred = sum(predicted.values()) / len(predicted)
            measured = [_get(u, "translation", f"en-{l}", sc["metric"]) for l in sc["languages"]]
            lines.append(f"| {label} | " + " | ".join(str(split[l]) for l in sc["languages"])
                         + f" | {_fmt(mean_pred, 2)} | {_fmt(_mean_pairs(u, sc), 2)} | "
                         + " | ".join(_fmt(m, 2) for m in measured) + " |")
        lines.append("")
    return lines


def _alignment(study: dict, units: dict) -> list[str]:
    lines = ["## Representation alignment", "",
             f"`xllama align` on {study['alignment']['lines']} FLORES-101 devtest sentence pairs: mean-pooled hidden "
             "states per layer, language-centred; retrieval = is the translation the nearest neighbour (mean of both "
             "directions, chance 1/N).", "",
             "| model | pair | peak layer | peak retrieval | layer 0 | last layer |", "|---|---|---|---|---|---|"]
    for name in study["alignment"]["models"]:
        u = units.get(name)
        if u is None or "alignment" not in u:
            lines.append(f"| {name} | – | – | – | – | – |")
            continue
        for pair in study["alignment"]["pairs"]:
            curve = retrieval_curve(u["alignment"], pair)
            k = peak_layer(curve)
            lines.append(f"| {name} | {pair} | {k} / {len(curve) - 1} | {curve[k]:.2f} | {curve[0]:.2f} | "
                         f"{curve[-1]:.2f} |")
    lines.append("")
    for name in study["alignment"]["models"]:
        u = units.get(name)
        if u is not None and (u["folder"] / "align" / "alignment.png").is_file():
            lines.append(f"![{name}](results/{name}/align/alignment.png)")
    return lines + [""]


def _runs(study: dict, units: dict) -> list[str]:
    lines = ["## Re-running a row", "",
             "Each unit is re-run on a GPU machine by `python benchmarks/reproduction/run_study.py run --only UNIT` "
             "(after `prepare`); these are the xllama commands it ran, from the repository root:", ""]
    for name, u in units.items():
        lines.append(f"<details><summary>{name} ({u['record']['status']})</summary>\n")
        lines.append("```")
        for p in u["record"]["phases"]:
            lines.append(f"{p['command']}    # {p['wall_s']:.0f} s")
        lines.append("```\n</details>")
    return lines
