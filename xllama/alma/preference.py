"""Build ALMA-R preference triplets with your own models: `xllama data preference`.

For every source sentence of ``--pairs``, candidate translations come from each ``--model`` under each
decoding setting of ``--beams`` (greedy = 1, beam search = k), all through the shared generation engine
(:mod:`xllama.eval.generate`, cached and resumable), plus the reference translation. Every candidate is
scored by one metric: COMET (``--metric comet``, reference-based, or a CometKiwi checkpoint through
``--comet-model``) via unbabel-comet, or sentence-level chrF++ (sacreBLEU; the declared fallback when no COMET
checkpoint is available, ``--metric auto``). The best-scored candidate is preferred, the worst dis-preferred
(ALMA-R's rule); a source whose best and worst are the same text is left out and counted. With a
reference-based metric the reference scores itself perfectly and is always preferred: the pairs then teach
"the reference over the worst system output", which is what a reference-based metric can tell.

Output (written atomically): ``triplets.jsonl`` (records ``{direction, source, preferred, dispreferred,
preferred_score, dispreferred_score, candidates: [{system, text, score}]}``, the triplet layout of task
``alma-cpo``) and ``manifest.json`` (models, decodings, metric and its signature, counts, guard).

The command lives in :mod:`xllama.alma` (it needs the evaluation layer's engine and metrics, which the data
layer may not import) and the top-level CLI attaches it to ``xllama data`` as ``xllama data preference``.

Example (CPU, after ALMA stage 2):
  xllama data preference --model runs/alma-stage2/best --pairs de-en=../shared/data/parallel/alma-human-written/deen \\
      --size 40 --beams 1,4 --guard flores200 --out runs/alma-r-triplets
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from xllama.errors import XllamaError

log = logging.getLogger(__name__)

FORMAT = "xllama-alma-preference-triplets"
REFERENCE = "reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="MODEL",
                        help="a model generating candidates (checkpoint folder, Hub id or .gguf); repeatable")
    parser.add_argument("--pairs", action="append", required=True, metavar="SRC-TGT=LOCATION",
                        help="sentences to translate from SRC to TGT with their reference (Moses folder or prefix, "
                             "JSON/JSONL/TSV/parquet translation records, hf:...); repeatable")
    parser.add_argument("--beams", default="1,4",
                        help="decoding settings, one candidate each: 1 = greedy, k = beam search (default 1,4)")
    parser.add_argument("--metric", choices=("auto", "comet", "chrf"), default="auto",
                        help="candidate scorer: comet (unbabel-comet), chrf (sentence chrF++), or auto: comet when "
                             "--comet-model resolves to a checkpoint, else chrF++ (default)")
    parser.add_argument("--comet-model", help="COMET or CometKiwi checkpoint (folder, .ckpt or Hub id); default "
                                              "Unbabel/wmt22-comet-da")
    parser.add_argument("--no-reference", action="store_true", help="do not add the reference as a candidate")
    parser.add_argument("--size", type=int, help="translate a seeded sample of N sentences per pair")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--guard", action="append", default=[], metavar="LOCATION",
                        help="an evaluation set whose sentences are left out (flores101, flores200, a file...)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, help="generation batch budget in tokens")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _beams(text: str) -> list[int]:
    try:
        beams = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        beams = []
    if not beams or min(beams) < 1:
        raise XllamaError(f"--beams {text!r}: expected comma-separated beam counts >= 1, e.g. 1,4")
    return list(dict.fromkeys(beams))


class SegmentScorer:
    """Scores (source, hypothesis, reference) segments: ``name``, ``signature``, ``reference_based``,
    ``score(srcs, hyps, refs) -> list[float]``."""

    def __init__(self, metric: str, comet_model: str | None = None, progress: bool = True):
        from xllama.eval import metrics

        self.progress = progress
        if metric == "auto":
            try:
                metrics.check_metric_packages(["comet"])
                metrics.resolve_comet_checkpoint(comet_model or metrics.DEFAULT_COMET_MODEL)
                metric = "comet"
            except XllamaError as e:
                log.warning("no COMET checkpoint (%s); scoring candidates with sentence-level chrF++ instead", e)
                metric = "chrf"
        self.name = metric
        if metric == "comet":
            self.model = comet_model or metrics.DEFAULT_COMET_MODEL
            metrics.check_metric_packages(["comet"])
            metrics.resolve_comet_checkpoint(self.model)  # fail before any generation
            self.reference_based = "kiwi" not in self.model.lower()
            from importlib import metadata

            self.signature = f"model:{self.model}|comet:{metadata.version('unbabel-comet')}|segment|scale:100"
        else:
            from sacrebleu.metrics import CHRF

            self._chrf = CHRF(word_order=2)  # chrF++, as xllama.eval.metrics.chrf, at sentence level
            self.signature = None  # sacreBLEU knows it once it has scored (number of references)
            self.reference_based = True

    def score(self, srcs: list[str], hyps: list[str], refs: list[str]) -> list[float]:
        if self.name == "comet":
            from xllama.eval.metrics import comet

            return [100.0 * s for s in comet(hyps, refs, srcs, self.model, progress=self.progress)[2]]
        scores = [self._chrf.sentence_score(h, [r]).score for h, r in zip(hyps, refs)]
        self.signature = self._chrf.get_signature().format() + "|segment"
        return scores


def run(args: argparse.Namespace) -> int:
    from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
    from xllama.data.mix import manifest as data_manifest
    from xllama.data.sample import draw
    from xllama.data.sources import load_guard, load_parallel
    from xllama.eval.generate import generate, load_for_generation
    from xllama.io import atomic_directory, content_hash
    from xllama.languages import parse_pair
    from xllama.prompts import alma_prompt

    started = time.perf_counter()
    beams = _beams(args.beams)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise XllamaError(f"output directory {out} already exists (pass --overwrite to replace it)")
    scorer = SegmentScorer(args.metric, args.comet_model, progress=not args.quiet)

    # the sentences: (src, tgt, source, reference), cleaned and guarded like training pairs
    items, pairs_report = [], {}
    directions = []
    for text in args.pairs:
        key, sep, location = text.partition("=")
        if not sep or not location.strip():
            raise XllamaError(f"bad --pairs {text!r}: expected SRC-TGT=LOCATION, e.g. de-en=data/deen")
        src, tgt = parse_pair(key.strip())
        directions.append((src, tgt, location.strip()))
    report = None
    if args.guard:
        languages = sorted({lang for s, t, _ in directions for lang in (s, t) if lang != "en"})
        report = GuardReport(ContaminationGuard([load_guard(g, languages) for g in args.guard]))
    for src, tgt, location in directions:
        data = load_parallel(location, src, tgt)
        sources, refs, provenance = data.source, data.target, data.provenance
        kept, removed = [], {"empty": 0, "duplicates": 0, "contamination": 0}
        seen = set()
        for s, r in zip(sources, refs):
            s, r = s.strip(), r.strip()
            k = (normalize(s), normalize(r))
            if not s or not r:
                removed["empty"] += 1
            elif k in seen:
                removed["duplicates"] += 1
            elif report is not None and report.contaminated(f"{src}-{tgt}", location, *k):
                removed["contamination"] += 1
            else:
                seen.add(k)
                kept.append((s, r))
        index, sampling = draw(list(range(len(kept))), args.size, args.seed, f"preference:{src}-{tgt}")
        items += [(src, tgt, kept[i][0], kept[i][1]) for i in index]
        pairs_report[f"{src}-{tgt}"] = {"loaded": len(sources), "removed": removed, "sampling": sampling,
                                        "source": provenance}
    if not items:
        raise XllamaError("no sentences to translate after cleaning (empty sides, duplicates, guard)")

    # the candidates: every model x every decoding, through the shared engine
    prompts = [alma_prompt(s, t, x) for s, t, x, _ in items]
    systems: list[tuple[str, list[str]]] = []
    cache = out.parent / f".{out.name}.generation-cache"
    for spec in args.model:
        model, tokenizer = load_for_generation(spec)
        for b in beams:
            name = f"{spec}#{'greedy' if b == 1 else f'beam{b}'}"
            outputs = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, num_beams=b,
                               batch_tokens=args.batch_tokens, progress=not args.quiet, cache=cache,
                               desc=f"candidates {name}")
            systems.append((name, outputs))
        del model
    if not args.no_reference:
        systems.append((REFERENCE, [r for *_, r in items]))
    if len(systems) < 2:
        raise XllamaError("fewer than two candidates per sentence: give more --beams or --model, or keep the "
                          "reference (no --no-reference)")

    # scoring: one call over every (sentence, candidate)
    flat = [(i, name, texts[i]) for name, texts in systems for i in range(len(items))]
    scores = scorer.score([items[i][2] for i, _, _ in flat], [t for _, _, t in flat], [items[i][3] for i, _, _ in flat])
    candidates: list[list[dict]] = [[] for _ in items]
    for (i, name, text), score in zip(flat, scores):
        candidates[i].append({"system": name, "text": text, "score": round(float(score), 4)})

    records, no_contrast, empty, wins = [], 0, 0, {}
    for (src, tgt, source, _), cands in zip(items, candidates):
        usable = [c for c in cands if c["text"].strip()]
        empty += len(cands) - len(usable)
        if len(usable) < 2:
            no_contrast += 1
            continue
        values = [c["score"] for c in usable]
        best, worst = usable[values.index(max(values))], usable[values.index(min(values))]
        if normalize(best["text"]) == normalize(worst["text"]):
            no_contrast += 1
            continue
        wins[best["system"]] = wins.get(best["system"], 0) + 1
        records.append({"direction": f"{src}-{tgt}", "source": source, "preferred": best["text"],
                        "dispreferred": worst["text"], "preferred_score": best["score"],
                        "dispreferred_score": worst["score"], "candidates": cands})
    if not records:
        raise XllamaError("no triplet: every sentence's best and worst candidates are the same text")
    manifest = data_manifest(
        FORMAT, len(records), ("direction", "source", "preferred", "dispreferred", "preferred_score",
                               "dispreferred_score", "candidates"), content_hash(records), started,
        triplets=len(records), sentences=len(items), no_contrast=no_contrast, empty_candidates=empty,
        preferred_by_system=dict(sorted(wins.items())), models=list(args.model),
        decoding=[{"num_beams": b, "max_new_tokens": args.max_new_tokens} for b in beams],
        reference_candidate=not args.no_reference,
        metric={"name": scorer.name, "signature": scorer.signature, "reference_based": scorer.reference_based,
                "requested": args.metric},
        pairs=pairs_report, guard=[g.provenance for g in report.guard.sets] if report else [],
        **guard_manifest(report), size=args.size, seed=args.seed,
    )
    with atomic_directory(out, overwrite=args.overwrite) as tmp:
        with open(tmp / "triplets.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    shutil.rmtree(cache, ignore_errors=True)  # kept only while unfinished: a rerun resumes from it
    print(f"{len(records)} triplets from {len(items)} sentences ({no_contrast} without contrast), scored with "
          f"{scorer.name} [{scorer.signature}] -> {out}")
    return 0
