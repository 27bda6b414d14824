"""Build and inspect CoIT/MuIT training mixes: `xllama data build` turns instruction data and parallel corpora
into one cleaned, shuffled dataset with a manifest; `xllama data stats DIR` summarises one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xllama.errors import XllamaError


BUILD_EXAMPLES = """examples:
  xllama data build --lang zh --mix x-llama --instructions en=PATH --instructions zh=PATH \\
      --parallel en-zh=PATH --guard PATH --out DIR
  xllama data build --spec recipes/data/x-llama-zh-shared.yaml --out DIR
  xllama data build --sample --lang zh,de --out DIR     # the small dataset shipped with xllama

A LOCATION is a local file or folder (relative to the current directory) or hf:owner/name[:config].
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    build = sub.add_parser("build", help="build a training mix (a datasets dataset + manifest.json)",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BUILD_EXAMPLES)
    build.add_argument("--spec", metavar="FILE.yaml",
                       help="a mix spec (the MixSpec keys; a training recipe's 'data:' section is used if present)")
    build.add_argument("--sample", action="store_true", help="use the small sample dataset shipped with xllama")
    build.add_argument("--lang", help="target language(s), comma-separated: zh or ar,el,hi,tr,vi,zh")
    build.add_argument("--mix", choices=("x-llama", "m-llama", "alpaca", "custom"),
                       help="x-llama (one language), m-llama (several), alpaca (English only) or custom "
                            "(every source given); default: x-llama for one language, m-llama for several")
    build.add_argument("--instructions", action="append", default=[], metavar="LANG=LOCATION",
                       help="instruction data in LANG (Alpaca JSON/JSONL, bilingual, prompt/response, hf:...)")
    build.add_argument("--parallel", action="append", default=[], metavar="SRC-TGT=LOCATION",
                       help="sentence pairs (Moses folder or prefix, TSV, JSON/JSONL translation records, hf:...)")
    build.add_argument("--guard", action="append", default=[], metavar="LOCATION",
                       help="an evaluation set whose sentences must not be trained on (FLORES folder, XQuAD JSON, "
                            "WMT JSON, text; or flores101/flores200/xquad)")
    build.add_argument("--no-guard", action="store_true", help="turn the contamination guard off")
    build.add_argument("--size", action="append", default=[], metavar="SOURCE=N|FRACTION",
                       help="examples of an instruction source, e.g. alpaca_zh=20000 or alpaca_en=0.5")
    build.add_argument("--parallel-size", action="append", default=[], metavar="LANG=N|FRACTION",
                       help="sentence pairs for a language, e.g. zh=12000")
    build.add_argument("--allocation", metavar="ALLOC.json",
                       help="a scaling allocation ({'allocation': {lang: pairs}}) that sets the parallel sizes")
    build.add_argument("--directions", choices=("en-x", "x-en", "both"), help="translation directions (default en-x)")
    build.add_argument("--seed", type=int, help="seed for sub-sampling and shuffling (default 42)")
    build.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    build.add_argument("--accept-language-mismatch", action="store_true",
                       help="build even when a source's detected language is not its label (recorded in the manifest)")
    build.add_argument("--min-length", type=int, help="shortest pair side kept (characters; CJK count 3)")
    build.add_argument("--max-length", type=int, help="longest pair side kept (default 1500)")
    build.add_argument("--max-length-ratio", type=float, help="largest length ratio of a pair's sides (default 3)")
    build.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing mix at --out")
    build.add_argument("--quiet", action="store_true", help="no progress bars")

    stats = sub.add_parser("stats", help="summarise a mix: manifest counts and length statistics")
    stats.add_argument("dir", metavar="DIR", help="a mix directory written by `xllama data build`")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        return run_build(args)
    return run_stats(args)


def _key_value(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise XllamaError(f"bad {option} {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def _number(text: str, option: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise XllamaError(f"bad {option} value {text!r}: expected a count or a fraction") from None


def _read_spec_file(path: str) -> tuple[dict, str]:
    from xllama.io import read_yaml

    doc = read_yaml(path) or {}
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):  # a training recipe
        return dict(doc["data"]), f"{path}:data"
    if not isinstance(doc, dict):
        raise XllamaError(f"{path}: expected a mapping of mix settings")
    return doc, str(path)


def _section(d: dict, key: str, where: str) -> dict:
    entry = d.setdefault(key, {})
    if not isinstance(entry, dict):
        raise XllamaError(f"{where}.{key}: expected a mapping, got {entry!r}")
    return entry


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def spec_dict_from_args(args: argparse.Namespace) -> tuple[dict, str]:
    """The MixSpec dict that the options describe (a --spec file, then the options on top)."""
    d, where = ({}, "mix")
    if args.spec:
        d, where = _read_spec_file(args.spec)
    if args.sample:
        d["sample"] = True
    if args.lang:
        d["languages"] = [code.strip() for code in args.lang.split(",") if code.strip()]
        if "{lang}" in json.dumps(d):  # a training recipe's per-language templates, as `xllama train` expands them
            from xllama.languages import expand_languages

            d = expand_languages(d, d["languages"])
    if args.mix:
        d["mix"] = args.mix
    elif args.lang and d.get("mix") in (None, "x-llama", "m-llama"):
        d["mix"] = "m-llama" if len(d["languages"]) > 1 else "x-llama"
    for option in ("instructions", "parallel"):
        for text in getattr(args, option):
            name, location = _key_value(text, f"--{option}")
            entry = _section(d, option, where)
            previous = entry.get(name)
            entry[name] = location if previous is None else [*_as_list(previous), location]
    if args.guard:
        d["guard"] = [*_as_list(d.get("guard") or []), *args.guard]
    if args.no_guard:
        d["guard_enabled"] = False
    for option, key in (("size", "sizes"), ("parallel_size", "parallel_sizes")):
        for text in getattr(args, option):
            name, value = _key_value(text, f"--{option.replace('_', '-')}")
            _section(d, key, where)[name] = _number(value, f"--{option.replace('_', '-')}")
    for option, key in (("allocation", "allocation"), ("directions", "directions"), ("seed", "seed"),
                        ("min_length", "min_length"), ("max_length", "max_length"),
                        ("max_length_ratio", "max_length_ratio")):
        value = getattr(args, option)
        if value is not None:
            d[key] = value
    if args.no_dedup:
        d["dedup"] = False
    if args.accept_language_mismatch:
        d["accept_language_mismatch"] = True
    if not d.get("sample") and not d.get("instructions") and not d.get("parallel"):
        raise XllamaError("nothing to build: give --instructions/--parallel, --spec FILE.yaml or --sample")
    return d, where


def run_build(args: argparse.Namespace) -> int:
    from xllama.data.mix import MixSpec, build_mix, write_mix

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # fail before the build, not after it
        raise XllamaError(f"output directory {out} already exists (pass --overwrite to replace it)")
    d, where = spec_dict_from_args(args)
    spec = MixSpec.from_dict(d, where=where)
    started = time.perf_counter()
    # scratch files (and the built mix, until it is copied into --out) go beside --out, not into RAM
    dataset, manifest = build_mix(spec, progress=not args.quiet, scratch_dir=out.resolve().parent)
    write_mix(dataset, manifest, out, overwrite=args.overwrite, progress=not args.quiet)
    seconds = time.perf_counter() - started
    print(f"wrote {manifest['examples']:,} examples to {out} in {seconds:.1f}s")
    print(_summary(manifest))
    return 0


def _summary(manifest: dict) -> str:
    lines = [f"  mix {manifest['spec']['mix']} seed {manifest['seed']} content_hash {manifest['content_hash']}"]
    for group in manifest["groups"]:
        direction = f" {group['direction']}" if group["direction"] else ""
        lines.append(f"  {group['source']:<14} {group['lang']:<4}{direction:<7} {group['examples']:>9,}")
    removed = manifest["removed"]
    lines.append(f"  removed: {removed['contamination']:,} contaminated, {removed['duplicates']:,} duplicates, "
                 f"{removed['filtered']:,} filtered")
    if manifest.get("contamination_by_rule"):
        rules = ", ".join(f"{rule} {n:,}" for rule, n in manifest["contamination_by_rule"].items())
        lines.append(f"  contamination by rule: {rules}")
    for check in manifest.get("language_check", []):
        if check["mismatch"]:
            shares = ", ".join(f"{lang} {share:.0%}" for lang, share in check["detected"].items())
            lines.append(f"  warning: {check['source']} is labelled {check['label']} but detected as {shares} "
                         "(accepted with --accept-language-mismatch)")
    for name, size in manifest.get("sizes", {}).items():
        if size.get("wanted") is not None and size["used"] < size["wanted"]:
            lines.append(f"  warning: {name}: {size['wanted']:,} requested, only {size['used']:,} available")
        elif size.get("repeated"):
            lines.append(f"  {name}: {size['drawn']:,} drawn from {size['available']:,} ({size['repeated']:,} repeats)")
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    from xllama.data.mix import load_mix, mix_stats

    dataset, manifest = load_mix(args.dir)
    stats = mix_stats(dataset)
    if args.json:
        keys = ("examples", "by_source", "by_lang", "by_direction", "removed", "seed", "content_hash")
        json.dump({**{k: manifest.get(k) for k in keys}, "lengths": stats}, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    print(f"{args.dir}: {manifest['examples']:,} examples")
    print(_summary(manifest))
    guards = ", ".join(g["location"] for g in manifest.get("guard", [])) or "none"
    print(f"  guard: {guards}")
    print("  lengths (characters; words = whitespace-separated, characters in unsegmented scripts: zh, ja, th):")
    print(f"  {'source':<14} {'examples':>9} {'prompt mean':>12} {'output mean':>12} {'median':>7} "
          f"{'p95':>7} {'max':>7} {'words':>6}")
    for source, s in stats.items():
        out = s["output_chars"]
        print(f"  {source:<14} {s['examples']:>9,} {s['prompt_chars']['mean']:>12.1f} {out['mean']:>12.1f} "
              f"{out['median']:>7.0f} {out['p95']:>7.0f} {out['max']:>7,} {s['output_words']['mean']:>6.1f}")
    return 0
