"""Cost and false positives of the contamination guard on the shared data.

1. Build time: ``build_mix`` of the README's x-LLaMA zh mix (English + Chinese Alpaca, ALMA's en-zh pairs)
   guarded by FLORES-101 devtest + XQuAD, timed in this process (wall and CPU seconds, median of --repeat),
   and the same mix with the guard off. Run it once with this checkout and once with an older checkout on
   PYTHONPATH (e.g. the commit before the n-gram guard) to compare the two guards in one session: the mix's
   public API (MixSpec, build_mix) is the same.
2. What the guard flags (``--flagged FILE``, needs xllama.data.guard): every Alpaca record (en and zh) the
   guard flags, with its rule and the evaluation sentence it matched, written to FILE for inspection; and the
   counts per rule on ALMA's en-zh pairs (which contain FLORES devtest by construction).

    python benchmarks/data/bench_guard.py --json /tmp/guard.json --flagged /tmp/flagged.json
    PYTHONPATH=/path/to/old/checkout python benchmarks/data/bench_guard.py --json /tmp/guard-old.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

SHARED = Path(os.environ.get("XLLAMA_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))


def spec_dict(guard: bool) -> dict:
    alpaca = str(SHARED / "data/instructions/alpaca-en-zh")
    return {
        "mix": "x-llama", "languages": ["zh"],
        "instructions": {"en": alpaca, "zh": alpaca},
        "parallel": {"en-zh": str(SHARED / "data/parallel/alma-human-written/zhen")},
        "guard": [str(SHARED / "data/eval/flores101/devtest"), str(SHARED / "data/eval/xquad")],
        "guard_enabled": guard,
    }


def time_build(guard: bool, repeat: int) -> dict:
    from xllama.data.mix import MixSpec, build_mix

    walls, cpus, manifest = [], [], None
    for _ in range(repeat):
        spec = MixSpec.from_dict(spec_dict(guard))
        w, c = time.perf_counter(), time.process_time()
        _, manifest = build_mix(spec, progress=False)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"guard": guard, "wall_s": walls, "cpu_s": cpus, "wall_median": statistics.median(walls),
            "cpu_median": statistics.median(cpus), "examples": manifest["examples"], "removed": manifest["removed"],
            "by_rule": manifest.get("contamination_by_rule"), "by_guard": manifest.get("contamination_by_guard")}


def flagged(path: str) -> dict:
    from xllama.data.guard import ContaminationGuard, normalize
    from xllama.data.sources import load_guard, load_instructions, load_parallel

    d = spec_dict(True)
    guard = ContaminationGuard([load_guard(location, ["zh"]) for location in d["guard"]])
    records, summary = [], {}
    for lang in ("en", "zh"):
        data = load_instructions(d["instructions"][lang], lang)
        rules = Counter()
        for i in range(len(data)):
            hit = guard.match(normalize(data.instruction[i]), normalize(data.input[i]), normalize(data.output[i]))
            if hit:
                rules[hit.rule] += 1
                records.append({"source": f"alpaca_{lang}", "origin": data.origin[i], "rule": hit.rule,
                                "matched": hit.matched, "evaluation": hit.evaluation,
                                "guard": guard.sets[hit.guard].location})
        summary[f"alpaca_{lang}"] = {"records": len(data), "flagged": dict(rules)}
    pairs = load_parallel(d["parallel"]["en-zh"], "en", "zh")
    rules = Counter()
    for a, b in zip(pairs.source, pairs.target):
        hit = guard.match(normalize(a), normalize(b))
        if hit:
            rules[hit.rule] += 1
            if hit.rule != "key":
                records.append({"source": "translation_en-zh", "rule": hit.rule, "matched": hit.matched,
                                "evaluation": hit.evaluation, "guard": guard.sets[hit.guard].location})
    summary["translation_en-zh"] = {"records": len(pairs), "flagged": dict(rules)}
    summary["thresholds"] = guard.config.as_dict()
    Path(path).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--flagged", help="write every record the guard flags here (needs xllama.data.guard)")
    args = parser.parse_args(argv)
    import xllama

    result = {"xllama": str(Path(xllama.__file__).parent), "load_start": os.getloadavg()}
    result["guard_off"] = time_build(False, args.repeat)
    result["guard_on"] = time_build(True, args.repeat)
    result["guard_cost_cpu_s"] = result["guard_on"]["cpu_median"] - result["guard_off"]["cpu_median"]
    if args.flagged:
        result["flagged"] = flagged(args.flagged)
    result["load_end"] = os.getloadavg()
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
