"""Data-size scaling laws for translation quality: read measured points, fit a small family of curves, and let
held-out error choose among them.

The x-LLaMA paper (Zhu et al. 2023) describes translation quality as a power law of the number of parallel pairs,
modulated by each language's similarity to English. Its exact equation could not be recovered for this project,
so instead of guessing one we fit three forms and *measure* which extrapolates best:

- ``power``  per language, a saturating power law   S(x) = S_max - A * (x + x0)^(-b)
- ``joint``  the same curve with b and x0 shared by all languages and a per-language scale A: the similarity
             factor (a language far from English needs more pairs for the same gain, i.e. a larger A)
- ``log``    per language, S(x) = a + b * log(x): the log-linear baseline, which never saturates

For the power forms S is linear in (S_max, A) once (b, x0) are fixed, so those two are solved exactly
(least squares with A >= 0) and only (b, x0) are searched: a coarse grid, then scipy's bounded
``least_squares`` (variable projection). Uncertainty comes from a residual bootstrap, and every form is scored
by the error of predicting each language's largest measured size from its smaller ones.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xllama.errors import XllamaError

FORMS = ("power", "joint", "log")
PAPER_NOTE = (
    "The paper's exact scaling equation was not available; these forms are candidates and the data chose "
    "among them by held-out error (each language's largest size predicted from its smaller ones)."
)
MIN_SIZES = 3  # distinct sizes a language needs before any curve is worth fitting

# Search box for the nonlinear parameters of the power forms. x0 is in units of the largest measured size.
B_BOUNDS = (0.01, 5.0)
X0_MAX = 10.0
_B_GRID = np.geomspace(0.02, 4.0, 28)
_X0_GRID = np.concatenate([[0.0], np.geomspace(1e-4, X0_MAX, 16)])

# points: lang -> (sizes, scores), both float arrays sorted by size
Points = dict[str, tuple[np.ndarray, np.ndarray]]


class ScalingWarning(UserWarning):
    """A fit or allocation that ran but whose answer deserves suspicion (flat curve, bound hit, extrapolation)."""


def warn(message: str, sink: list[str] | None = None) -> None:
    """Warn through Python's warnings (visible in notebooks and tests) and keep a copy for the JSON report."""
    if sink is not None:
        sink.append(message)
    warnings.warn(message, ScalingWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class PowerCurve:
    """S(x) = S_max - A * (x + x0)^(-b): rises with diminishing returns towards the ceiling S_max."""

    S_max: float
    A: float
    b: float
    x0: float
    form = "power"

    def __call__(self, x):
        return self.S_max - self.A * (np.asarray(x, dtype=float) + self.x0) ** -self.b

    def slope(self, x):
        return self.A * self.b * (np.asarray(x, dtype=float) + self.x0) ** (-self.b - 1)

    def size_for_slope(self, g: float) -> float:
        """The x where S'(x) = g (S' falls monotonically, so this is the inverse the allocator bisects over)."""
        if self.A <= 0:
            return -math.inf
        return (self.A * self.b / g) ** (1 / (self.b + 1)) - self.x0

    def size_for_score(self, s: float) -> float:
        """The x where S(x) = s; infinite at or above the ceiling."""
        gap = self.S_max - s
        if self.A <= 0:  # flat: every size scores S_max
            return -math.inf if gap >= 0 else math.inf
        if gap <= 0:
            return math.inf
        with np.errstate(over="ignore"):
            return float(np.power(self.A / gap, 1 / self.b) - self.x0)

    @property
    def min_size(self) -> int:
        return 0 if self.x0 > 0 else 1  # (0 + 0)^(-b) is infinite

    def params(self) -> dict:
        return {"S_max": self.S_max, "A": self.A, "b": self.b, "x0": self.x0}

    def shape_problem(self) -> str | None:
        """Why this curve is not non-decreasing and concave (what the exact allocator needs), or None."""
        if self.A < 0:
            return f"A={self.A:g} < 0 makes it decreasing"
        if self.b <= 0:
            return f"b={self.b:g} <= 0 makes it non-concave"
        if self.x0 < 0:
            return f"x0={self.x0:g} < 0 leaves it undefined at small sizes"
        return None


@dataclass(frozen=True)
class LogCurve:
    """S(x) = a + b * log(x): a constant gain per doubling of the data, with no ceiling."""

    a: float
    b: float
    form = "log"

    def __call__(self, x):
        return self.a + self.b * np.log(np.asarray(x, dtype=float))

    def slope(self, x):
        return self.b / np.asarray(x, dtype=float)

    def size_for_slope(self, g: float) -> float:
        return self.b / g if self.b > 0 else -math.inf

    def size_for_score(self, s: float) -> float:
        if self.b <= 0:
            return -math.inf if s <= self.a else math.inf
        with np.errstate(over="ignore"):
            return float(np.exp((s - self.a) / self.b))

    min_size = 1

    def params(self) -> dict:
        return {"a": self.a, "b": self.b}

    def shape_problem(self) -> str | None:
        return f"b={self.b:g} < 0 makes it decreasing" if self.b < 0 else None


Curve = PowerCurve | LogCurve
_CURVE_TYPES = {"power": PowerCurve, "log": LogCurve}


def curve_from_dict(d: dict, where: str = "curve") -> Curve:
    """Rebuild a curve from its JSON form ``{"form": "power", "params": {...}}``; errors name the key."""
    if not isinstance(d, dict) or "form" not in d or "params" not in d:
        raise XllamaError(f"{where}: expected an object with 'form' and 'params'")
    cls = _CURVE_TYPES.get(d["form"])
    if cls is None:
        raise XllamaError(f"{where}: unknown curve form {d['form']!r} (expected one of {sorted(_CURVE_TYPES)})")
    names = list(cls.__dataclass_fields__)
    params = d["params"]
    missing = [n for n in names if n not in params]
    if missing:
        raise XllamaError(f"{where}: params lack {', '.join(missing)} (a {d['form']} curve needs {', '.join(names)})")
    values = {}
    for n in names:
        v = params[n]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise XllamaError(f"{where}: param {n}={v!r} is not a finite number")
        values[n] = float(v)
    return cls(**values)


def curve_to_dict(curve: Curve) -> dict:
    return {"form": curve.form, "params": {k: _round(v) for k, v in curve.params().items()}}


def _round(v: float, digits: int = 10) -> float:
    return float(f"{v:.{digits}g}")


# ---------------------------------------------------------------------------------------------- points


def read_points(path: str | Path) -> Points:
    """Read a CSV with columns ``lang,size,score`` (extra columns are ignored); every bad row is an error naming
    its line. Several rows may share a (lang, size), e.g. one per seed. An optional ``metric`` column must hold
    a single value: a curve through BLEU and COMET points at once would be meaningless."""
    path = Path(path)
    if not path.is_file():
        raise XllamaError(f"points file not found: {path}")
    rows: dict[str, list[tuple[float, float]]] = {}
    metrics: set[str] = set()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("lang", "size", "score") if c not in header]
        if missing:
            raise XllamaError(f"{path}: line 1: header {header} lacks column(s) {', '.join(missing)} "
                              "(expected lang,size,score)")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            lang = (row.get("lang") or "").strip()
            if not lang:
                raise XllamaError(f"{path}: line {line}: empty lang")
            size = _number(row.get("size"), path, line, "size")
            score = _number(row.get("score"), path, line, "score")
            if size <= 0:
                raise XllamaError(f"{path}: line {line}: size {size:g} must be positive (number of parallel pairs)")
            rows.setdefault(lang, []).append((size, score))
            if "metric" in header:
                metrics.add((row.get("metric") or "").strip())
    if len(metrics) > 1:
        raise XllamaError(f"{path}: the metric column mixes {', '.join(sorted(metrics))}; fit one metric at a time")
    if not rows:
        raise XllamaError(f"{path}: no points (expected rows of lang,size,score)")
    points = {lang: _as_arrays(pairs) for lang, pairs in sorted(rows.items())}
    validate_points(points, str(path))
    return points


def points_from_records(records, source: str = "points") -> Points:
    """Build points from (lang, size, score) triples (a DataFrame's rows, a list), with the same checks."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for lang, size, score in records:
        rows.setdefault(str(lang), []).append((float(size), float(score)))
    points = {lang: _as_arrays(pairs) for lang, pairs in sorted(rows.items())}
    validate_points(points, source)
    return points


def _number(text, path, line, column) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise XllamaError(f"{path}: line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise XllamaError(f"{path}: line {line}: {column} is {text.strip()!r}; every point needs a finite {column}")
    return value


def _as_arrays(pairs) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted(pairs)
    return np.array([p[0] for p in pairs], dtype=float), np.array([p[1] for p in pairs], dtype=float)


def validate_points(points: Points, source: str = "points") -> None:
    """The checks every fit relies on: positive sizes, finite scores, at least three distinct sizes per language."""
    if not points:
        raise XllamaError(f"{source}: no points")
    for lang, (sizes, scores) in points.items():
        if len(sizes) != len(scores):
            raise XllamaError(f"{source}: {lang}: {len(sizes)} sizes but {len(scores)} scores")
        if not np.all(np.isfinite(scores)):
            raise XllamaError(f"{source}: {lang}: a score is NaN or infinite")
        if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
            raise XllamaError(f"{source}: {lang}: sizes must be positive numbers, got {sizes.tolist()}")
        distinct = np.unique(sizes)
        if len(distinct) < MIN_SIZES:
            raise XllamaError(
                f"{source}: {lang} has {len(distinct)} distinct size(s) {distinct.astype(int).tolist()}; a curve "
                f"needs at least {MIN_SIZES} (measure more sizes or drop the language)")


def _scores_fall(sizes, scores) -> bool:
    """True when scores do not rise with size (rank correlation <= 0): no increasing curve will fit."""
    from scipy.stats import spearmanr

    if np.ptp(scores) == 0:
        return True
    return bool(spearmanr(sizes, scores).statistic <= 0)


# ---------------------------------------------------------------------------------------------- fitting


def n_params(form: str, n_langs: int) -> int:
    return {"power": 4 * n_langs, "log": 2 * n_langs, "joint": 2 * n_langs + 2}[form]


def _not_enough(points: Points, form: str) -> str | None:
    """Why ``form`` cannot be identified from these points (too few distinct sizes), or None."""
    distinct = {lang: len(np.unique(s)) for lang, (s, _) in points.items()}
    if form == "joint":
        need = n_params("joint", len(points))
        if sum(distinct.values()) < need or min(distinct.values()) < 2:
            return f"joint needs {need} distinct (lang, size) points and 2 sizes per language; have {distinct}"
        return None
    per_lang = n_params(form, 1)
    short = {lang: n for lang, n in distinct.items() if n < per_lang}
    if short:
        return f"{form} needs {per_lang} distinct sizes per language; " + ", ".join(
            f"{lang} has {n}" for lang, n in short.items())
    return None


def _linear_part(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for y ~ S_max - A*z with A >= 0, vectorised over the leading axes of z (grid points)."""
    zc = z - z.mean(axis=-1, keepdims=True)
    yc = y - y.mean()
    var = np.einsum("...i,...i->...", zc, zc)
    cov = np.einsum("...i,i->...", zc, yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(var > 0, np.maximum(-cov / var, 0.0), 0.0)
    S_max = y.mean() + A * z.mean(axis=-1)
    return S_max, A


def _power_residuals(b, x0, points: Points, x_ref: float) -> np.ndarray:
    """Residuals of the best (S_max, A) per language for given b and x0 (broadcast over grids of b and x0)."""
    out = []
    for sizes, scores in points.values():
        z = ((sizes + x0[..., None] * x_ref) / x_ref) ** -b[..., None]
        S_max, A = _linear_part(z, scores)
        out.append(S_max[..., None] - A[..., None] * z - scores)
    return np.concatenate(out, axis=-1)


def _fit_power_shared(points: Points) -> tuple[float, float]:
    """(b, x0) minimising the squared error when all languages in ``points`` share them."""
    from scipy.optimize import least_squares

    x_ref = max(s.max() for s, _ in points.values())
    bb, tt = np.meshgrid(_B_GRID, _X0_GRID, indexing="ij")
    sse = (_power_residuals(bb, tt, points, x_ref) ** 2).sum(axis=-1)
    i, j = np.unravel_index(np.nanargmin(sse), sse.shape)
    result = least_squares(
        lambda p: _power_residuals(np.array(p[0]), np.array(p[1]), points, x_ref),
        x0=[bb[i, j], tt[i, j]], bounds=([B_BOUNDS[0], 0.0], [B_BOUNDS[1], X0_MAX]), x_scale=[1.0, max(tt[i, j], 1e-3)],
    )
    b, t = (result.x if result.cost <= 0.5 * sse[i, j] else (bb[i, j], tt[i, j]))
    return float(b), float(t * x_ref)


def _power_curves(points: Points, b: float, x0: float) -> dict[str, PowerCurve]:
    curves = {}
    for lang, (sizes, scores) in points.items():
        z = (sizes + x0) ** -b
        S_max, A = _linear_part(z, scores)
        curves[lang] = PowerCurve(float(S_max), float(A), b, x0)
    return curves


def fit_form(points: Points, form: str) -> dict[str, Curve]:
    """Point estimates of one form's curve for every language (no checks beyond identifiability)."""
    reason = _not_enough(points, form)
    if reason:
        raise XllamaError(f"cannot fit the {form} form: {reason}")
    if form == "joint":
        return _power_curves(points, *_fit_power_shared(points))
    if form == "power":
        curves = {}
        for lang, data in points.items():
            curves.update(_power_curves({lang: data}, *_fit_power_shared({lang: data})))
        return curves
    if form == "log":
        curves = {}
        for lang, (sizes, scores) in points.items():
            b, a = np.polyfit(np.log(sizes), scores, 1)
            curves[lang] = LogCurve(float(a), float(b))
        return curves
    raise XllamaError(f"unknown form {form!r} (expected one of {', '.join(FORMS)})")


def r_squared(curve: Curve, sizes, scores) -> float | None:
    sst = float(((scores - scores.mean()) ** 2).sum())
    if sst == 0:
        return None
    return 1 - float(((scores - curve(sizes)) ** 2).sum()) / sst


def heldout_errors(points: Points, form: str) -> dict | None:
    """Fit on every language's smaller sizes, predict each language's largest (mean of its repeats there).

    All languages lose their largest size at once, so the joint form gains nothing from a language's own
    top point: this is the situation the fit is for (measured small, extrapolate large). None when the reduced
    points cannot identify the form.
    """
    smaller = {lang: (s[s < s.max()], y[s < s.max()]) for lang, (s, y) in points.items()}
    if _not_enough(smaller, form):
        return None
    curves = fit_form(smaller, form)
    out = {}
    for lang, (sizes, scores) in points.items():
        top = sizes.max()
        observed = float(scores[sizes == top].mean())
        predicted = float(curves[lang](top))
        out[lang] = {"size": int(top) if top == int(top) else top, "observed": _round(observed),
                     "predicted": _round(predicted), "error": _round(predicted - observed)}
    return out


def bootstrap(points: Points, form: str, curves: dict[str, Curve], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Residual bootstrap: refit ``n`` times to fitted values plus resampled residuals, per language.

    Residual (not case) resampling keeps every measured size in each replicate; with five or six sizes per
    language case resampling would often drop below the sizes a form needs. Residuals are inflated by
    sqrt(n / (n - p)) because fitted residuals understate the noise. Returns lang -> (n, n_params) samples;
    replicate i is the same draw for every language, so joint quantities (a gain) can be paired.
    """
    rng = np.random.default_rng(seed)
    p = n_params(form, len(points)) / len(points)
    fitted, residuals = {}, {}
    for lang, (sizes, scores) in points.items():
        fitted[lang] = curves[lang](sizes)
        dof = len(sizes) - p
        residuals[lang] = (scores - fitted[lang]) * math.sqrt(len(sizes) / dof if dof > 0 else 1.0)
    samples = {lang: [] for lang in points}
    for _ in range(n):
        replicate = {lang: (sizes, fitted[lang] + rng.choice(residuals[lang], size=len(sizes)))
                     for lang, (sizes, _) in points.items()}
        for lang, curve in fit_form(replicate, form).items():
            samples[lang].append(list(curve.params().values()))
    return {lang: np.array(s) for lang, s in samples.items()}


def _shape_warnings(form: str, curves: dict[str, Curve], points: Points, sink: list[str]) -> None:
    """Our forms are concave by construction, so a bad shape shows up as a flat or decreasing curve, or as a
    parameter pinned to its search bound (the data wanted something the form cannot express)."""
    overall_max = max(s.max() for s, _ in points.values())
    for lang, c in curves.items():
        if isinstance(c, LogCurve):
            if c.b <= 0:
                warn(f"{lang}: the {form} fit is {'flat' if c.b == 0 else 'decreasing'} (b={c.b:.3g}): more pairs "
                     "are predicted not to help; check the points", sink)
            continue
        if c.A <= 0:
            warn(f"{lang}: the {form} fit is flat (A=0): scores do not rise with size, so the curve cannot guide "
                 "allocation; check the points", sink)
            continue
        x_ref = overall_max if form == "joint" else points[lang][0].max()
        pinned = [f"b={c.b:.3g}" for bound in B_BOUNDS if math.isclose(c.b, bound, rel_tol=1e-3)]
        if c.x0 >= 0.999 * X0_MAX * x_ref:
            pinned.append(f"x0={c.x0:.3g}")
        if pinned:
            warn(f"{lang}: the {form} fit put {' and '.join(pinned)} on the search bound; the curve is poorly "
                 "determined by these points (try another form or measure more sizes)", sink)


def fit(points: Points, form: str = "auto", n_bootstrap: int = 200, seed: int = 0, source: str = "points") -> dict:
    """Fit one form (or every form with ``form='auto'``, keeping the lowest held-out error) and report it all.

    The result is JSON-ready: ``curves`` (the chosen form's curve per language, with 95% bootstrap intervals and
    the bootstrap samples the plot bands and the allocator's gain interval use), ``forms`` (every form's
    curves, R^2 and held-out errors, for comparison), ``selection``, ``warnings`` and the points themselves.
    """
    validate_points(points, source)
    if form != "auto" and form not in FORMS:
        raise XllamaError(f"unknown form {form!r} (expected auto or one of {', '.join(FORMS)})")
    sink: list[str] = []
    for lang, (sizes, scores) in points.items():
        if _scores_fall(sizes, scores):
            warn(f"{lang}: scores do not rise with size (rank correlation <= 0); no increasing curve fits them", sink)

    forms: dict[str, dict] = {}
    fitted: dict[str, dict[str, Curve]] = {}
    for f in (FORMS if form == "auto" else (form,)):
        reason = _not_enough(points, f)
        if reason:
            if form != "auto":
                raise XllamaError(f"{source}: cannot fit the {f} form: {reason}; try --form auto")
            forms[f] = {"skipped": reason}
            continue
        curves = fitted[f] = fit_form(points, f)
        r2 = {lang: r_squared(curves[lang], s, y) for lang, (s, y) in points.items()}
        sq = np.concatenate([(curves[lang](s) - y) ** 2 for lang, (s, y) in points.items()])
        held = heldout_errors(points, f)
        forms[f] = {
            "n_params": n_params(f, len(points)),
            "r2": {lang: None if v is None else _round(v, 6) for lang, v in r2.items()},
            "rmse": _round(float(np.sqrt(sq.mean())), 6),
            "heldout": held,
            "heldout_rmse": None if held is None else _round(
                float(np.sqrt(np.mean([h["error"] ** 2 for h in held.values()]))), 6),
            "curves": {lang: curve_to_dict(c) for lang, c in curves.items()},
        }

    chosen, selection = _choose(form, forms, sink)
    curves = fitted[chosen]
    _shape_warnings(chosen, curves, points, sink)
    dof = sum(len(s) for s, _ in points.values()) - n_params(chosen, len(points))
    if dof <= 0:
        warn(f"the {chosen} fit has no residual degrees of freedom (as many parameters as points): it "
             "interpolates, and its bootstrap intervals are meaningless", sink)

    samples = bootstrap(points, chosen, curves, n_bootstrap, seed) if n_bootstrap > 0 else {}
    report_curves = {}
    for lang, (sizes, scores) in points.items():
        entry = curve_to_dict(curves[lang])
        if lang in samples:
            lo, hi = np.percentile(samples[lang], [2.5, 97.5], axis=0)
            entry["ci95"] = {k: [_round(a, 6), _round(b, 6)] for k, a, b in zip(entry["params"], lo, hi)}
        entry["r2"] = forms[chosen]["r2"][lang]
        entry["measured_sizes"] = [float(sizes.min()), float(sizes.max())]
        entry["n_points"] = int(len(sizes))
        if lang in samples:
            entry["bootstrap"] = [[_round(v, 8) for v in row] for row in samples[lang]]
        report_curves[lang] = entry

    report = {
        "kind": "xllama.scaling.fit",
        "version": 1,
        "source": source,
        "form": chosen,
        "equation": "S(x) = a + b*log(x)" if chosen == "log" else "S(x) = S_max - A*(x + x0)^(-b)",
        "selection": selection,
        "note": PAPER_NOTE,
        "curves": report_curves,
        "forms": forms,
        "bootstrap": {"n": n_bootstrap, "seed": seed, "method": "residual"},
        "points": {lang: {"size": s.tolist(), "score": y.tolist()} for lang, (s, y) in points.items()},
        "warnings": sink,
    }
    if chosen == "joint":
        report["similarity"] = similarity(curves)
    return report


def _choose(form: str, forms: dict, sink: list[str]) -> tuple[str, str]:
    if form != "auto":
        return form, f"requested: {form}"
    scored = {f: r["heldout_rmse"] for f, r in forms.items() if r.get("heldout_rmse") is not None}
    if scored:
        order = sorted(scored, key=lambda f: (scored[f], forms[f]["n_params"]))
        ranking = " < ".join(f"{f} {scored[f]:.4g}" for f in order)
        return order[0], f"auto: lowest held-out RMSE predicting each language's largest size ({ranking})"
    fallback = next(f for f in ("joint", "log", "power") if "skipped" not in forms.get(f, {"skipped": 1}))
    warn("no form could be scored on held-out points (each language needs one more size than the form's "
         f"parameters); chose {fallback} without that check", sink)
    return fallback, f"auto: no held-out score available; fell back to {fallback}"


def similarity(curves: dict[str, PowerCurve]) -> dict[str, float]:
    """The joint form's similarity factor, made interpretable: with b shared, language l needs
    (A_l / A_min)^(1/b) times the pairs of the most English-like language to close the same share of the gap to
    its ceiling; similarity is the inverse of that multiplier (1 for the language that learns fastest)."""
    a_min = min(c.A for c in curves.values() if c.A > 0) if any(c.A > 0 for c in curves.values()) else 0
    out = {}
    for lang, c in curves.items():
        out[lang] = _round((a_min / c.A) ** (1 / c.b), 6) if c.A > 0 and a_min > 0 else None
    return out


def curves_from_fit(fit_report: dict, where: str = "fit") -> dict[str, Curve]:
    """The chosen curves of a fit report (as written by ``fit``), checked."""
    curves = fit_report.get("curves") if isinstance(fit_report, dict) else None
    if not isinstance(curves, dict) or not curves:
        raise XllamaError(f"{where}: no 'curves' object (expected the output of `xllama scaling fit`)")
    return {lang: curve_from_dict(d, f"{where}: curves.{lang}") for lang, d in curves.items()}


def bootstrap_curves(fit_report: dict) -> list[dict[str, Curve]] | None:
    """The bootstrap replicates of a fit report as curve sets (replicate i across languages), or None."""
    curves = fit_report.get("curves", {})
    if not curves or not all("bootstrap" in d for d in curves.values()):
        return None
    counts = {len(d["bootstrap"]) for d in curves.values()}
    if len(counts) != 1 or 0 in counts:
        return None
    out = []
    for i in range(counts.pop()):
        replicate = {}
        for lang, d in curves.items():
            cls = _CURVE_TYPES[d["form"]]
            replicate[lang] = cls(*map(float, d["bootstrap"][i]))
        out.append(replicate)
    return out
