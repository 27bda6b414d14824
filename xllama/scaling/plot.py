"""Figures for a scaling fit: measured points, fitted curves with 95% bootstrap bands, a colour per language.

Figures are built on matplotlib's object API with the Agg canvas, so they render to PNG without a display and
without touching pyplot's global backend (a notebook keeps showing its inline figures). Each function returns
the Figure; pass ``path`` to also write a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xllama.scaling.laws import bootstrap_curves, curve_from_dict


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)  # atomic: a reader never sees half a PNG
    return fig


def _grid(fit: dict) -> np.ndarray:
    sizes = np.concatenate([p["size"] for p in fit["points"].values()])
    return np.geomspace(sizes.min() / 1.5, sizes.max() * 2, 200)


def plot_fit(fit: dict, path: str | Path | None = None, title: str | None = None):
    """The chosen form: points, curve and 95% band per language, on a log size axis."""
    fig, (ax,) = _figure(7, 4.5)
    grid = _grid(fit)
    replicates = bootstrap_curves(fit)
    for i, (lang, entry) in enumerate(fit["curves"].items()):
        colour = f"C{i % 10}"
        points = fit["points"][lang]
        curve = curve_from_dict(entry)
        r2 = entry.get("r2")
        ax.plot(grid, curve(grid), color=colour, label=f"{lang}" + (f" (R²={r2:.3f})" if r2 is not None else ""))
        if replicates:
            band = np.array([r[lang](grid) for r in replicates])
            lo, hi = np.percentile(band, [2.5, 97.5], axis=0)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.2, linewidth=0)
        ax.scatter(points["size"], points["score"], color=colour, s=18, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("parallel pairs")
    ax.set_ylabel("score")
    source = Path(str(fit.get("source", ""))).name
    label = ("SYNTHETIC points, " if "synthetic" in source.lower() else "") + source
    ax.set_title(title or f"{label}: {fit['form']} fit, {fit['equation']}; bands: 95% bootstrap", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_forms(fit: dict, path: str | Path | None = None):
    """Every fitted form side by side, one panel per language; the largest size (the held-out one) is ringed."""
    langs = list(fit["points"])
    fig, axes = _figure(3.2 * len(langs), 3.2, ncols=len(langs))
    grid = _grid(fit)
    styles = {"power": "-", "joint": "--", "log": ":"}
    for ax, lang in zip(axes, langs):
        points = fit["points"][lang]
        for form, report in fit["forms"].items():
            if "curves" not in report:
                continue
            held = (report.get("heldout") or {}).get(lang)
            label = form + (f" (held-out err {held['error']:+.2f})" if held else "")
            ax.plot(grid, curve_from_dict(report["curves"][lang])(grid), styles.get(form, "-"), label=label)
        ax.scatter(points["size"], points["score"], color="k", s=14, zorder=3)
        top = max(points["size"])
        ax.scatter([top], [np.mean([y for x, y in zip(points["size"], points["score"]) if x == top])],
                   s=90, facecolors="none", edgecolors="r", zorder=4)
        ax.set_xscale("log")
        ax.set_title(lang)
        ax.set_xlabel("parallel pairs")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    return _save(fig, path)


def plot_allocation(allocation: dict, path: str | Path | None = None):
    """Optimised vs uniform pairs per language, each bar labelled with its predicted score."""
    langs = list(allocation["allocation"])
    fig, (ax,) = _figure(1.2 * len(langs) + 3, 3.5)
    x = np.arange(len(langs))
    for offset, name, split, scores in (
        (-0.2, "optimised", allocation["allocation"], allocation["predicted"]),
        (0.2, "uniform", allocation["uniform"]["allocation"], allocation["uniform"]["predicted"]),
    ):
        bars = ax.bar(x + offset, [split[l] for l in langs], width=0.4, label=name)
        ax.bar_label(bars, labels=[f"{scores[l]:.1f}" for l in langs], fontsize=7)
    ax.set_xticks(x, langs)
    ax.set_ylabel("parallel pairs")
    ax.set_title(f"budget {allocation['budget']}, objective {allocation['objective']}: "
                 f"gain {allocation['gain']:+.3f} (bar labels: predicted score)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
