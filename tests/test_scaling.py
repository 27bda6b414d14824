"""Scaling laws and budget allocation: fits recover known curves, the allocator matches brute force, bad input
fails loudly, and the CLI works end to end (in process and as a subprocess for exit codes)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from xllama.cli import main
from xllama.errors import XllamaError
from xllama.scaling import allocate as al
from xllama.scaling import laws
from xllama.scaling.laws import LogCurve, PowerCurve, ScalingWarning

REPO = Path(__file__).resolve().parent.parent
SIZES = [500, 1000, 2000, 4000, 8000, 16000, 32000, 64000]


def noisy_points(curves: dict, sizes=SIZES, noise=0.3, seed=0, repeats=1):
    rng = np.random.default_rng(seed)
    return laws.points_from_records(
        (lang, x, float(c(x)) + rng.normal(0, noise)) for lang, c in curves.items() for x in sizes
        for _ in range(repeats))


def write_csv(path: Path, rows, header=("lang", "size", "score")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------- fitting


def test_power_fit_recovers_known_parameters():
    # Tolerances: over 30 noise seeds b stayed within 0.06 of the truth and S_max within 0.7.
    truth = PowerCurve(S_max=82.0, A=900.0, b=0.5, x0=1500.0)
    sizes = [250, *SIZES, 128000]
    points = noisy_points({"zh": truth}, sizes=sizes, noise=0.1, repeats=2)
    (fitted,) = laws.fit_form(points, "power").values()
    assert fitted.b == pytest.approx(truth.b, abs=0.08)
    assert fitted.S_max == pytest.approx(truth.S_max, abs=1.0)
    grid = np.geomspace(250, 128000, 30)
    assert np.max(np.abs(fitted(grid) - truth(grid))) < 0.3  # the curve itself, where it was measured


def test_joint_fit_recovers_shared_exponent_and_similarity_order():
    truth = {"de": PowerCurve(84, 400, 0.45, 800), "zh": PowerCurve(80, 900, 0.45, 800),
             "ar": PowerCurve(78, 1600, 0.45, 800)}
    # Tolerances: over 30 noise seeds b stayed within 0.06 of the truth and every S_max within 2.5.
    points = noisy_points(truth, noise=0.15, seed=1)
    report = laws.fit(points, form="joint", n_bootstrap=60, seed=0)
    curves = laws.curves_from_fit(report)
    assert curves["de"].b == pytest.approx(0.45, abs=0.08)
    assert len({c.b for c in curves.values()}) == 1 and len({c.x0 for c in curves.values()}) == 1
    for lang, c in truth.items():
        assert curves[lang].S_max == pytest.approx(c.S_max, abs=3.0)
    lo, hi = report["curves"]["de"]["ci95"]["b"]
    assert lo <= 0.45 <= hi
    sim = report["similarity"]  # de learns fastest, ar slowest: the order of the true A
    assert sim["de"] == 1.0 and sim["de"] > sim["zh"] > sim["ar"]


def test_log_fit_recovers_known_parameters():
    truth = LogCurve(a=10.0, b=4.0)
    points = noisy_points({"vi": truth}, noise=0.3, seed=2)
    (fitted,) = laws.fit_form(points, "log").values()
    assert fitted.b == pytest.approx(4.0, abs=0.2)
    assert fitted.a == pytest.approx(10.0, abs=2.0)


def test_auto_picks_lowest_heldout_error_and_rejects_log_for_saturating_data():
    truth = {"de": PowerCurve(80, 3000, 0.7, 200), "zh": PowerCurve(75, 6000, 0.7, 200)}
    report = laws.fit(noisy_points(truth, noise=0.2, seed=3), form="auto", n_bootstrap=20)
    scored = {f: r["heldout_rmse"] for f, r in report["forms"].items()}
    assert report["form"] == min(scored, key=scored.get)
    assert report["form"] != "log"
    assert scored["log"] > scored["joint"]
    held = report["forms"]["joint"]["heldout"]["zh"]
    assert held["size"] == 64000 and held["error"] == pytest.approx(held["predicted"] - held["observed"], abs=1e-5)
    assert all(r2 > 0.95 for r2 in report["forms"]["joint"]["r2"].values())


def test_synthetic_points_are_reproducible_and_fit_recovers_their_truth(tmp_path):
    script = REPO / "scaling" / "make_synthetic_points.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_points", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "p.csv")], check=True, capture_output=True)
    assert (tmp_path / "p.csv").read_bytes() == (REPO / "scaling" / "points_synthetic.csv").read_bytes()
    report = laws.fit(laws.read_points(tmp_path / "p.csv"), form="joint", n_bootstrap=40)
    lo, hi = report["curves"]["de"]["ci95"]["b"]
    assert lo <= module.B <= hi
    for lang, p in module.true_params().items():
        assert report["curves"][lang]["params"]["S_max"] == pytest.approx(p["S_max"], abs=3.0)


# ------------------------------------------------------------------------------------------- allocation


def random_curves(rng, n_langs):
    curves = {}
    for i in range(n_langs):
        if rng.random() < 0.1:  # flat: more pairs do not help
            curves[f"l{i}"] = PowerCurve(float(rng.uniform(50, 90)), 0.0, 0.5, 10.0)
        elif rng.random() < 0.3:
            curves[f"l{i}"] = LogCurve(float(rng.uniform(0, 10)), float(rng.uniform(0.5, 5)))
        else:
            curves[f"l{i}"] = PowerCurve(float(rng.uniform(50, 90)), float(rng.uniform(5, 500)),
                                         float(rng.uniform(0.2, 2)), float(rng.choice([0.0, rng.uniform(0, 20)])))
    return curves


@pytest.mark.parametrize("objective", ["sum", "maximin"])
@pytest.mark.parametrize("seed", range(8))
def test_allocator_matches_brute_force(objective, seed):
    rng = np.random.default_rng(seed)
    checked = 0
    while checked < 8:
        curves = random_curves(rng, int(rng.integers(2, 4)))
        budget = int(rng.integers(6, 40))
        mins = {l: int(rng.integers(c.min_size, 5)) for l, c in curves.items() if rng.random() < 0.5}
        caps = {l: int(rng.integers(mins.get(l, 1) + 1, budget + 1)) for l in curves if rng.random() < 0.5}
        weights = {l: float(rng.choice([0.5, 1.0, 3.0])) for l in curves} if objective == "sum" else None
        lo = {l: max(mins.get(l, 0), c.min_size) for l, c in curves.items()}
        hi = {l: min(caps.get(l, budget), budget) for l in curves}
        if sum(lo.values()) > budget:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScalingWarning)  # caps below the budget: tested separately
            result = al.allocate(curves, budget, caps=caps, mins=mins, weights=weights, objective=objective)
        best, best_value = al.brute_force(curves, budget, lo, hi, weights, objective)
        alloc = result["allocation"]
        assert all(isinstance(n, int) for n in alloc.values())
        assert sum(alloc.values()) == min(budget, sum(hi.values()))
        assert all(lo[l] <= alloc[l] <= hi[l] for l in curves)
        value = al.objective_value(curves, alloc, objective, weights)
        assert value == pytest.approx(best_value, rel=1e-9, abs=1e-9), (curves, budget, lo, hi, alloc, best)
        if objective == "maximin":  # ties broken by the best total score
            total = sum(float(curves[l](alloc[l])) for l in curves)
            assert total == pytest.approx(sum(float(curves[l](best[l])) for l in curves), rel=1e-9)
        checked += 1


def test_sum_allocation_equalises_marginal_gains_at_scale():
    curves = {"de": PowerCurve(84, 500, 0.45, 800), "zh": PowerCurve(80, 1200, 0.45, 800), "vi": LogCurve(5, 6)}
    weights = {"de": 1.0, "zh": 2.0, "vi": 1.0}
    result = al.allocate(curves, 200_000, weights=weights)
    alloc = result["allocation"]
    gains = {l: weights[l] * float(curves[l](alloc[l] + 1) - curves[l](alloc[l])) for l in curves}
    losses = {l: weights[l] * float(curves[l](alloc[l]) - curves[l](alloc[l] - 1)) for l in curves}
    assert max(gains.values()) <= min(losses.values()) * (1 + 1e-9)  # no single-pair move helps
    assert result["gain"] >= 0 and result["uniform"]["allocation"] == {"de": 66667, "zh": 66667, "vi": 66666}


def test_allocation_report_shape_caps_and_extrapolation_warning():
    curves = {"de": PowerCurve(84, 500, 0.45, 800), "zh": PowerCurve(80, 1200, 0.45, 800)}
    with pytest.warns(ScalingWarning, match="outside the measured sizes"):
        result = al.allocate(curves, 100_000, caps={"zh": 15_000}, measured={"de": (500, 32000), "zh": (500, 32000)})
    assert result["allocation"]["zh"] == 15_000 and result["allocation"]["de"] == 85_000
    assert set(result) >= {"allocation", "predicted", "uniform", "gain"}
    assert result["predicted"]["zh"] == pytest.approx(float(curves["zh"](15000)), abs=1e-3)
    with pytest.warns(ScalingWarning, match="stay unallocated"):
        capped = al.allocate(curves, 100, caps={"de": 30, "zh": 20})
    assert capped["allocation"] == {"de": 30, "zh": 20}


# ------------------------------------------------------------------------------------------- bad input


def test_fewer_than_three_sizes_is_an_error(tmp_path):
    path = write_csv(tmp_path / "p.csv", [("zh", 1000, 50), ("zh", 2000, 55), ("zh", 2000, 56),
                                          ("de", 1000, 60), ("de", 2000, 62), ("de", 4000, 65)])
    with pytest.raises(XllamaError, match="zh has 2 distinct size"):
        laws.read_points(path)


@pytest.mark.parametrize("bad_row, message", [
    (("zh", 0, 50), "line 3: size 0 must be positive"),
    (("zh", -100, 50), "line 3: size -100 must be positive"),
    (("zh", 1000, "nan"), "line 3: score is 'nan'"),
    (("zh", 1000, ""), "line 3: score '' is not a number"),
    (("zh", "many", 50), "line 3: size 'many' is not a number"),
])
def test_bad_rows_name_their_line(tmp_path, bad_row, message):
    path = write_csv(tmp_path / "p.csv", [("zh", 500, 40), bad_row, ("zh", 2000, 55), ("zh", 4000, 58)])
    with pytest.raises(XllamaError, match=message):
        laws.read_points(path)


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(XllamaError, match="lacks column"):
        laws.read_points(write_csv(tmp_path / "p.csv", [("zh", 1)], header=("lang", "size")))
    with pytest.raises(XllamaError, match="not found"):
        laws.read_points(tmp_path / "absent.csv")


def test_form_needing_more_sizes_than_measured_is_an_error_but_auto_skips_it():
    points = noisy_points({"zh": PowerCurve(80, 900, 0.5, 500), "de": PowerCurve(84, 400, 0.5, 500)},
                          sizes=[1000, 4000, 16000])
    with pytest.raises(XllamaError, match="power needs 4 distinct sizes"):
        laws.fit(points, form="power", n_bootstrap=0)
    report = laws.fit(points, form="auto", n_bootstrap=0)
    assert "skipped" in report["forms"]["power"] and report["form"] in ("joint", "log")


def test_decreasing_scores_warn_and_cannot_be_allocated():
    points = laws.points_from_records([("zh", x, 60 - 2 * math.log(x)) for x in (500, 1000, 2000, 4000)]
                                      + [("de", x, 50 + 3 * math.log(x)) for x in (500, 1000, 2000, 4000)])
    with pytest.warns(ScalingWarning) as record:
        report = laws.fit(points, form="log", n_bootstrap=0)
    messages = [str(w.message) for w in record]
    assert any(m.startswith("zh: scores do not rise") for m in messages)
    assert any(m.startswith("zh: the log fit is decreasing") for m in messages)
    assert messages == report["warnings"]  # everything warned is also in the JSON report
    with pytest.raises(XllamaError, match="curve for zh: .*decreasing"):
        al.allocate(laws.curves_from_fit(report), 10_000)


def test_flat_power_fit_warns():
    points = laws.points_from_records([("zh", x, 60 - 0.001 * x) for x in (500, 1000, 2000, 4000, 8000)])
    with pytest.warns(ScalingWarning) as record:
        laws.fit(points, form="joint", n_bootstrap=0)
    assert any("zh: the joint fit is flat (A=0)" in str(w.message) for w in record)


def test_allocator_rejects_bad_requests():
    curves = {"de": PowerCurve(84, 500, 0.45, 800), "zh": PowerCurve(80, 1200, 0.45, 800)}
    with pytest.raises(XllamaError, match="below the sum of the minimums"):
        al.allocate(curves, 1000, mins={"de": 600, "zh": 600})
    with pytest.raises(XllamaError, match="--cap names ar, which has no fitted curve"):
        al.allocate(curves, 1000, caps={"ar": 100})
    with pytest.raises(XllamaError, match="cap 10 is below its minimum 20"):
        al.allocate(curves, 1000, caps={"de": 10}, mins={"de": 20})
    with pytest.raises(XllamaError, match="--weight applies to --objective sum"):
        al.allocate(curves, 1000, weights={"de": 2}, objective="maximin")
    with pytest.raises(XllamaError, match="positive whole number"):
        al.allocate(curves, 0)
    non_concave = {"de": curves["de"], "zh": PowerCurve(80, -5, 0.5, 0)}
    with pytest.raises(XllamaError, match="curve for zh: A=-5 < 0"):
        al.allocate(non_concave, 1000)
    with pytest.raises(XllamaError, match="b=-0.5 <= 0 makes it non-concave"):
        al.allocate({"de": PowerCurve(80, 1, -0.5, 0)}, 1000)


def test_hand_edited_fit_file_errors_name_the_key():
    with pytest.raises(XllamaError, match=r"curves.zh: params lack b"):
        laws.curves_from_fit({"curves": {"zh": {"form": "power", "params": {"S_max": 1, "A": 1, "x0": 0}}}}, "F.json")
    with pytest.raises(XllamaError, match="unknown curve form 'cubic'"):
        laws.curves_from_fit({"curves": {"zh": {"form": "cubic", "params": {}}}})


# ------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One CLI fit shared by the CLI tests (a fit with bootstrap takes a second or two)."""
    root = tmp_path_factory.mktemp("scaling")
    truth = {"de": PowerCurve(84, 500, 0.45, 800), "zh": PowerCurve(80, 1200, 0.45, 800),
             "ar": PowerCurve(78, 2000, 0.45, 800)}
    rng = np.random.default_rng(5)
    rows = [(l, x, round(float(c(x)) + rng.normal(0, 0.3), 3)) for l, c in truth.items() for x in SIZES[:-1]]
    points = write_csv(root / "points.csv", rows)
    assert main(["scaling", "fit", str(points), "--out", str(root / "FIT.json"), "--plot", str(root / "FIT.png"),
                 "--bootstrap", "30"]) == 0
    return root


def test_cli_fit_writes_json_and_png(fitted, capsys):
    report = json.loads((fitted / "FIT.json").read_text())
    assert report["form"] in laws.FORMS and set(report["curves"]) == {"ar", "de", "zh"}
    assert report["note"] == laws.PAPER_NOTE
    assert len(report["curves"]["zh"]["bootstrap"]) == 30
    assert (fitted / "FIT.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_allocate_prints_and_writes_mixer_allocation(fitted, capsys):
    out = fitted / "ALLOC.json"
    code = main(["scaling", "allocate", str(fitted / "FIT.json"), "--budget", "100000", "--cap", "zh=15000",
                 "--min", "ar=1000", "--weight", "zh=2", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    alloc = written["allocation"]
    assert sum(alloc.values()) == 100000 and alloc["zh"] <= 15000 and alloc["ar"] >= 1000
    assert set(written["predicted"]) == set(alloc) and "allocation" in written["uniform"]
    assert isinstance(written["gain"], float) and len(written["gain_ci95"]) == 2
    assert main(["scaling", "allocate", str(fitted / "FIT.json"), "--budget", "5000", "--objective", "maximin",
                 "--json"]) == 0
    maximin = json.loads(capsys.readouterr().out)
    assert maximin["objective"] == "maximin" and sum(maximin["allocation"].values()) == 5000


def test_cli_bad_input_is_one_line_and_exit_code_2(fitted, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "xllama", "scaling", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    cases = [
        (["allocate", str(fitted / "FIT.json"), "--budget", "1000", "--cap", "xx=5"], "no fitted curve"),
        (["allocate", str(fitted / "FIT.json"), "--budget", "100", "--min", "zh=80", "--min", "de=80"],
         "below the sum of the minimums"),
        (["allocate", str(fitted / "FIT.json"), "--budget", "1000", "--cap", "zh"], "expected LANG=VALUE"),
        (["fit", str(write_csv(tmp_path / "bad.csv", [("zh", 1000, 1), ("zh", 2000, 2)])), "--out",
          str(tmp_path / "F.json")], "zh has 2 distinct size"),
    ]
    for args, message in cases:
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "F.json").exists()
    ok = run("allocate", str(fitted / "FIT.json"), "--budget", "1000", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["budget"] == 1000


def test_mixed_metrics_are_an_error(tmp_path):
    rows = [("zh", x, 50 + i, m) for i, x in enumerate((500, 1000, 2000)) for m in ("bleu", "comet")]
    with pytest.raises(XllamaError, match="metric column mixes bleu, comet"):
        laws.read_points(write_csv(tmp_path / "p.csv", rows, header=("lang", "size", "score", "metric")))
