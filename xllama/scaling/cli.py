"""Fit data-size scaling laws to measured points and split a parallel-data budget across languages.

  xllama scaling fit POINTS.csv --out FIT.json [--form auto|power|joint|log] [--plot FIT.png]
  xllama scaling allocate FIT.json --budget 100000 [--cap zh=15000 ...] [--min ar=1000 ...]
                          [--weight zh=2 ...] [--objective sum|maximin] [--out ALLOC.json] [--json]

POINTS.csv has columns lang,size,score (size = parallel pairs, score = any higher-is-better metric). The
paper's exact scaling equation was not available, so `fit` tries a per-language saturating power law, a joint
one (shared exponent, per-language similarity scale) and log-linear, and keeps the lowest held-out error.
The allocation JSON's `allocation` key (lang -> pairs) is what the data mixer reads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from xllama.errors import XllamaError


def _lang_values(items: list[str] | None, flag: str, cast) -> dict:
    """Parse repeated ``--flag zh=15000`` (or ``--flag zh=15000,ar=3000``) into {lang: value}."""
    out = {}
    for item in items or []:
        for part in item.split(","):
            lang, sep, value = part.partition("=")
            if not sep or not lang.strip() or not value.strip():
                raise XllamaError(f"--{flag} {part!r}: expected LANG=VALUE, e.g. --{flag} zh=15000")
            out[lang.strip()] = cast(value.strip(), f"--{flag} {part}")
    return out


def _pairs(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise XllamaError(f"{where}: {text!r} is not a number of pairs") from None
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise XllamaError(f"{where}: {text!r} must be a non-negative whole number of pairs")
    return int(value)


def _weight(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise XllamaError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise XllamaError(f"{where}: weights must be finite and non-negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="scaling_command", metavar="SUBCOMMAND", required=True)

    fit = sub.add_parser("fit", help="fit curves to lang,size,score points and compare forms by held-out error")
    fit.add_argument("points", help="CSV with columns lang,size,score (extra columns are ignored)")
    fit.add_argument("--out", required=True, help="where to write the fit (JSON)")
    fit.add_argument("--form", default="auto", choices=["auto", "power", "joint", "log"],
                     help="curve family; auto keeps the lowest held-out error (default)")
    fit.add_argument("--plot", help="also draw points, curves and 95%% bands to this PNG")
    fit.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for intervals (default 200)")
    fit.add_argument("--seed", type=int, default=0)

    alloc = sub.add_parser("allocate", help="split a budget of parallel pairs across languages")
    alloc.add_argument("fit", help="a FIT.json written by `xllama scaling fit`")
    alloc.add_argument("--budget", required=True, help="total parallel pairs to split")
    alloc.add_argument("--cap", action="append", metavar="LANG=N", help="pairs available for LANG (repeatable)")
    alloc.add_argument("--min", action="append", metavar="LANG=N", help="at least N pairs for LANG (repeatable)")
    alloc.add_argument("--weight", action="append", metavar="LANG=W",
                       help="weight of LANG's score in the sum objective (default 1; repeatable)")
    alloc.add_argument("--objective", default="sum", choices=["sum", "maximin"],
                       help="sum: maximise the (weighted) mean predicted score; maximin: raise the weakest")
    alloc.add_argument("--out", help="also write the allocation JSON here (the data mixer reads its 'allocation')")
    alloc.add_argument("--json", action="store_true", help="print the allocation as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        from xllama.scaling.laws import ScalingWarning

        warnings.simplefilter("always", ScalingWarning)
        code = _fit(args) if args.scaling_command == "fit" else _allocate(args)
    for w in caught:
        print(f"xllama scaling: warning: {w.message}", file=sys.stderr)
    return code


def _fit(args) -> int:
    from xllama.io import atomic_write_json
    from xllama.scaling.laws import fit, read_points

    if args.bootstrap < 0:
        raise XllamaError("--bootstrap must be >= 0")
    report = fit(read_points(args.points), form=args.form, n_bootstrap=args.bootstrap, seed=args.seed,
                 source=str(args.points))
    atomic_write_json(args.out, report)
    if args.plot:
        from xllama.scaling.plot import plot_fit

        plot_fit(report, args.plot)
    print(_fit_summary(report))
    return 0


def _fit_summary(report: dict) -> str:
    lines = [f"form: {report['form']}  ({report['selection']})", "", "form    R^2(mean)  RMSE      held-out RMSE"]
    for form, r in report["forms"].items():
        if "skipped" in r:
            lines.append(f"{form:<7} skipped: {r['skipped']}")
            continue
        r2 = [v for v in r["r2"].values() if v is not None]
        mean_r2 = f"{sum(r2) / len(r2):.4f}" if r2 else "n/a"
        held = "n/a" if r["heldout_rmse"] is None else f"{r['heldout_rmse']:.4g}"
        lines.append(f"{form:<7} {mean_r2:<10} {r['rmse']:<9.4g} {held}")
    lines.append("")
    for lang, c in report["curves"].items():
        params = "  ".join(f"{k}={v:.4g}" + (f" [{c['ci95'][k][0]:.4g}, {c['ci95'][k][1]:.4g}]" if "ci95" in c else "")
                           for k, v in c["params"].items())
        lines.append(f"{lang}: {params}")
    if "similarity" in report:
        lines.append("similarity (1 = learns fastest): "
                     + ", ".join(f"{l}={v}" for l, v in report["similarity"].items()))
    return "\n".join(lines)


def _allocate(args) -> int:
    from xllama.io import atomic_write_json, read_json
    from xllama.scaling.allocate import allocate
    from xllama.scaling.laws import bootstrap_curves, curves_from_fit

    report = read_json(args.fit)
    curves = curves_from_fit(report, str(args.fit))
    measured = {l: tuple(d["measured_sizes"]) for l, d in report["curves"].items() if "measured_sizes" in d}
    result = allocate(
        curves,
        _pairs(args.budget, "--budget"),
        caps=_lang_values(args.cap, "cap", _pairs),
        mins=_lang_values(args.min, "min", _pairs),
        weights=_lang_values(args.weight, "weight", _weight) or None,
        objective=args.objective,
        measured=measured,
        replicates=bootstrap_curves(report),
    )
    result["fit"] = str(args.fit)
    if args.out:
        atomic_write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(_allocation_table(result, args.out))
    return 0


def _allocation_table(result: dict, out: str | None) -> str:
    """The allocation for a person: pairs and predicted score per language next to the uniform split."""
    uniform = result["uniform"]
    limits = result["constraints"]
    lines = [f"{result['budget']:,} pairs, objective {result['objective']}", "",
             f"{'':<6} {'allocated':>21} {'uniform split':>21}",
             f"{'lang':<6} {'pairs':>10} {'predicted':>10} {'pairs':>10} {'predicted':>10} {'min':>8} "
             f"{'cap':>10} {'weight':>7}"]
    for lang, pairs in result["allocation"].items():
        weight = (limits.get("weight") or {}).get(lang, 1)
        lines.append(f"{lang:<6} {pairs:>10,} {result['predicted'][lang]:>10.4g} {uniform['allocation'][lang]:>10,} "
                     f"{uniform['predicted'][lang]:>10.4g} {limits['min'].get(lang, 0):>8,} "
                     f"{limits['max'].get(lang, 0):>10,} {weight:>7g}")
    ci = result.get("gain_ci95")
    ci_text = f" (95% interval {ci[0]:+.4g} to {ci[1]:+.4g})" if ci else ""
    lines += ["", f"objective {result['objective_value']:.4g} vs uniform {uniform['objective']:.4g}: "
              f"gain {result['gain']:+.4g}{ci_text}, the {result['gain_meaning']}"]
    lines.append(f"written to {out} (--json prints it)" if out else "--json prints the full result; --out FILE "
                 "writes it for `xllama data build --allocation`")
    return "\n".join(lines)
