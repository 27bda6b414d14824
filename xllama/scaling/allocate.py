"""Split a budget of parallel pairs across languages using fitted scaling curves.

Weighted sum: maximise sum_l w_l * S_l(x_l) subject to sum_l x_l = B and lo_l <= x_l <= hi_l. For concave,
non-decreasing S_l the Lagrangian  L = sum_l w_l S_l(x_l) - lam * (sum_l x_l - B)  is stationary where every
language not held at a bound has the same marginal gain:

    w_l * S_l'(x_l) = lam   =>   x_l(lam) = clip(S_l'^{-1}(lam / w_l), lo_l, hi_l)

sum_l x_l(lam) falls as lam grows, so bisection on lam finds the lam that spends exactly B. Sizes are then made
integers: floor, and hand out the few remaining pairs one at a time to the best marginal gain; a final exchange
pass (move one pair while that helps) certifies integer optimality, which for concave curves is sufficient.

Maximin (raise the weakest language): bisection on the target score t, where language l needs
x_l(t) = max(lo_l, ceil(S_l^{-1}(t))) pairs; the largest t whose needs fit in B wins, and any budget left over
is spent on the (unweighted) sum with those needs as minimums.

``brute_force`` enumerates every integer split of a small budget and is the tests' referee.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from xllama.errors import XllamaError
from xllama.scaling.laws import Curve, warn

OBJECTIVES = ("sum", "maximin")


def _bisect(f, lo: float, hi: float, iters: int = 200, log: bool = False) -> tuple[float, float]:
    """Shrink [lo, hi] keeping f(lo) true and f(hi) false (f monotone); log=True bisects in log space."""
    for _ in range(iters):
        mid = math.exp((math.log(lo) + math.log(hi)) / 2) if log else (lo + hi) / 2
        if mid in (lo, hi):
            break
        if f(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def _gain(curve: Curve, x: int, weight: float = 1.0) -> float:
    """Weighted score gained by the (x+1)-th pair."""
    return weight * float(curve(x + 1) - curve(x))


def _improve_integer(curves, alloc, lo, hi, weights, total) -> dict[str, int]:
    """Top ``alloc`` up to ``total`` pairs by best marginal gain, then move single pairs while any move helps."""
    alloc = dict(alloc)
    while sum(alloc.values()) < total:
        open_ = [l for l in alloc if alloc[l] < hi[l]]
        best = max(open_, key=lambda l: _gain(curves[l], alloc[l], weights[l]))
        alloc[best] += 1
    while True:  # each move strictly raises the objective, so this ends; from the floor start it takes few
        up = [l for l in alloc if alloc[l] < hi[l]]
        down = [l for l in alloc if alloc[l] > lo[l]]
        if not up or not down:
            break
        give = max(up, key=lambda l: _gain(curves[l], alloc[l], weights[l]))
        take = min(down, key=lambda l: _gain(curves[l], alloc[l] - 1, weights[l]))
        gain_up = _gain(curves[give], alloc[give], weights[give])
        loss_down = _gain(curves[take], alloc[take] - 1, weights[take])
        if give == take or gain_up <= loss_down * (1 + 1e-12) + 1e-12:
            break
        alloc[give] += 1
        alloc[take] -= 1
    return alloc


def solve_sum(curves: dict[str, Curve], budget: int, lo: dict[str, int], hi: dict[str, int],
              weights: dict[str, float]) -> dict[str, int]:
    """Exact integer maximiser of sum_l w_l S_l(x_l) for concave non-decreasing curves (see module docstring)."""
    total = min(budget, sum(hi.values()))

    def sizes(lam: float) -> dict[str, float]:
        out = {}
        for l, c in curves.items():
            x = c.size_for_slope(lam / weights[l]) if weights[l] > 0 else -math.inf
            out[l] = min(max(x, lo[l]), hi[l])
        return out

    def spends_too_much(lam: float) -> bool:  # true for small lam, false for large: the bisection predicate
        return sum(sizes(lam).values()) > total

    if total == sum(hi.values()):  # the caps absorb the whole budget
        return dict(hi)
    lam_max = max(weights[l] * float(c.slope(lo[l])) for l, c in curves.items())  # above it: all at minimums
    if lam_max > 0 and spends_too_much(1e-300):
        lam = _bisect(spends_too_much, 1e-300, 2 * lam_max, log=True)[1]  # the side spending <= the budget
        start = {l: int(math.floor(x)) for l, x in sizes(lam).items()}
    else:  # even a vanishing multiplier leaves budget over: every rising curve is at its cap, the rest are flat
        start = {l: int(min(max(x, lo[l]), hi[l])) for l, x in sizes(1e-300).items()}
        for l in curves:  # so any split of what is left is optimal
            start[l] = min(hi[l], start[l] + total - sum(start.values()))
    return _improve_integer(curves, start, lo, hi, weights, total)


def _need(curve: Curve, target: float, lo: int, hi: int) -> float:
    """Fewest integer pairs in [lo, hi] for which ``curve`` reaches ``target``; infinite when none does."""
    x = curve.size_for_score(target)
    if x > hi:
        return math.inf
    n = lo if x <= lo else math.ceil(x)
    if n > lo and curve(n - 1) >= target:  # ceil after round-off can overshoot by one
        n -= 1
    while n <= hi and curve(n) < target:  # ... or undershoot
        n += 1
    return n if n <= hi else math.inf


def solve_maximin(curves: dict[str, Curve], budget: int, lo: dict[str, int], hi: dict[str, int]) -> dict[str, int]:
    """Integer maximiser of min_l S_l(x_l); ties are broken by the largest sum of scores."""

    def needs(t: float) -> dict[str, float]:
        return {l: _need(c, t, lo[l], hi[l]) for l, c in curves.items()}

    def affordable(t: float) -> bool:
        n = needs(t)
        return sum(n.values()) <= budget  # inf when a language cannot reach t within its cap

    t_lo = min(float(c(lo[l])) for l, c in curves.items())  # affordable: the minimums fit the budget
    t_hi = min(float(c(hi[l])) for l, c in curves.items())  # nothing can beat every language at its cap
    t = t_hi if affordable(t_hi) else _bisect(affordable, t_lo, t_hi)[0]
    floor = {l: int(n) for l, n in needs(t).items()}
    return solve_sum(curves, budget, floor, hi, {l: 1.0 for l in curves})


def uniform_split(budget: int, lo: dict[str, int], hi: dict[str, int]) -> dict[str, int]:
    """The baseline: the same number of pairs for every language, within its minimum and cap (water-filling)."""
    total = min(budget, sum(hi.values()))
    share = _bisect(lambda u: sum(min(max(u, lo[l]), hi[l]) for l in lo) <= total, 0.0, float(total) + 1)[0]
    alloc = {l: int(min(max(math.floor(share), lo[l]), hi[l])) for l in lo}
    for l in itertools.cycle(sorted(lo, key=lambda l: alloc[l])):  # hand out the rounding remainder
        if sum(alloc.values()) >= total:
            break
        if alloc[l] < hi[l]:
            alloc[l] += 1
    return alloc


def objective_value(curves: dict[str, Curve], alloc: dict[str, int], objective: str,
                    weights: dict[str, float] | None = None) -> float:
    """Weighted mean score (objective 'sum', same maximiser as the weighted sum) or the minimum score."""
    scores = {l: float(curves[l](alloc[l])) for l in curves}
    if objective == "maximin":
        return min(scores.values())
    w = weights or {l: 1.0 for l in curves}
    return sum(w[l] * scores[l] for l in curves) / sum(w.values())


def brute_force(curves: dict[str, Curve], budget: int, lo: dict[str, int], hi: dict[str, int],
                weights: dict[str, float] | None = None, objective: str = "sum") -> tuple[dict[str, int], float]:
    """Best integer split by enumeration (small budgets only): the referee for the exact solvers."""
    langs = list(curves)
    total = min(budget, sum(hi[l] for l in langs))
    weights = weights or {l: 1.0 for l in langs}
    best, best_key = None, None
    for head in itertools.product(*(range(lo[l], hi[l] + 1) for l in langs[:-1])):
        last = total - sum(head)
        if not lo[langs[-1]] <= last <= hi[langs[-1]]:
            continue
        alloc = dict(zip(langs, (*head, last)))
        scores = [float(curves[l](alloc[l])) for l in langs]
        if objective == "maximin":
            key = (round(min(scores), 9), sum(scores))
        else:
            key = (sum(weights[l] * s for l, s in zip(langs, scores)),)
        if best_key is None or key > best_key:
            best, best_key = alloc, key
    if best is None:
        raise XllamaError("brute force: no feasible split")
    return best, objective_value(curves, best, objective, weights)


def allocate(curves: dict[str, Curve], budget: int, caps: dict[str, int] | None = None,
             mins: dict[str, int] | None = None, weights: dict[str, float] | None = None,
             objective: str = "sum", measured: dict[str, tuple[float, float]] | None = None,
             replicates: list[dict[str, Curve]] | None = None) -> dict:
    """Check the inputs, solve, and report the optimised and uniform splits with their predicted scores.

    ``measured`` (lang -> (smallest, largest) measured size) turns sizes outside the data into warnings;
    ``replicates`` (bootstrap curve sets) give a 95% interval for the gain over uniform.
    """
    caps, mins = dict(caps or {}), dict(mins or {})
    if objective not in OBJECTIVES:
        raise XllamaError(f"unknown objective {objective!r} (expected {' or '.join(OBJECTIVES)})")
    if weights and objective == "maximin":
        raise XllamaError("--weight applies to --objective sum; maximin raises the weakest language unweighted")
    if not curves:
        raise XllamaError("no curves to allocate over")
    for name, given in (("cap", caps), ("min", mins), ("weight", weights or {})):
        unknown = sorted(set(given) - set(curves))
        if unknown:
            raise XllamaError(f"--{name} names {', '.join(unknown)}, which has no fitted curve "
                              f"(curves: {', '.join(sorted(curves))})")
    for lang, c in curves.items():
        problem = c.shape_problem()
        if problem:
            raise XllamaError(f"curve for {lang}: {problem}; the exact allocator needs non-decreasing concave "
                              "curves (refit, or drop the language)")
    if isinstance(budget, bool) or int(budget) != budget or budget <= 0:
        raise XllamaError(f"--budget must be a positive whole number of pairs, got {budget!r}")
    budget = int(budget)
    weights = {l: float((weights or {}).get(l, 1.0)) for l in curves}
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise XllamaError(f"weights must be finite and non-negative, got {weights}")
    if sum(weights.values()) == 0:
        raise XllamaError("all weights are zero: nothing to maximise")

    sink: list[str] = []
    lo, hi = {}, {}
    for lang, c in curves.items():
        lo[lang] = int(mins.get(lang, 0))
        if lo[lang] < 0 or caps.get(lang, 0) < 0:
            raise XllamaError(f"{lang}: minimums and caps must be non-negative")
        if lo[lang] < c.min_size:
            if lang in mins:
                raise XllamaError(f"--min {lang}={lo[lang]}: the {c.form} curve is undefined below "
                                  f"{c.min_size} pair(s)")
            lo[lang] = c.min_size
        hi[lang] = int(min(caps.get(lang, budget), budget))
        if hi[lang] < lo[lang]:
            raise XllamaError(f"{lang}: cap {caps.get(lang)} is below its minimum {lo[lang]}")
    if sum(lo.values()) > budget:
        raise XllamaError(f"budget {budget} is below the sum of the minimums ({sum(lo.values())}: "
                          + ", ".join(f"{l}={n}" for l, n in lo.items()) + ")")
    if sum(hi.values()) < budget:
        warn(f"the caps hold only {sum(hi.values())} pairs, less than the budget {budget}; "
             f"{budget - sum(hi.values())} pairs stay unallocated", sink)

    if objective == "sum":
        alloc = solve_sum(curves, budget, lo, hi, weights)
    else:
        alloc = solve_maximin(curves, budget, lo, hi)
    uniform = uniform_split(budget, lo, hi)

    for lang, n in alloc.items():
        if measured and lang in measured:
            small, large = measured[lang]
            if not small <= n <= large:
                warn(f"{lang}: {n} pairs lies outside the measured sizes {small:g}-{large:g}; its predicted "
                     "score is an extrapolation", sink)

    def scores(split):
        return {l: round(float(curves[l](split[l])), 4) for l in curves}

    value, value_uniform = (objective_value(curves, s, objective, weights) for s in (alloc, uniform))
    result = {
        "kind": "xllama.scaling.allocation",
        "version": 1,
        "objective": objective,
        "budget": budget,
        "allocation": alloc,
        "predicted": scores(alloc),
        "uniform": {"allocation": uniform, "predicted": scores(uniform), "objective": round(value_uniform, 4)},
        "objective_value": round(value, 4),
        "gain": round(value - value_uniform, 4),
        "gain_meaning": ("weighted mean predicted score, optimised minus uniform" if objective == "sum"
                         else "lowest predicted score, optimised minus uniform"),
        "constraints": {"min": lo, "max": hi, "weight": weights},  # max: the cap, or the budget
    }
    if replicates:
        gains = [objective_value(r, alloc, objective, weights) - objective_value(r, uniform, objective, weights)
                 for r in replicates]
        result["gain_ci95"] = [round(float(v), 4) for v in np.percentile(gains, [2.5, 97.5])]
    result["warnings"] = sink
    return result
