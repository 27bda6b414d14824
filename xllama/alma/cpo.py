"""ALMA-R stage 3: contrastive preference optimisation (CPO; Xu et al. 2024) as a task of the training engine.

Task ``alma-cpo``. Each training example is a *triplet*: a source sentence x in ALMA's prompt, a preferred
translation y_w and a dis-preferred one y_l. The loss of a step is

    L = mean over triplets of  -log sigmoid(beta * (log p(y_w|x) - log p(y_l|x)))
        + nll_weight * (sum of -log p over the preferred target tokens) / (number of those tokens)

with sequence log-probabilities summed over the target tokens and EOS only (the prompt carries no loss), no
reference model (CPO's point), ``beta`` and ``nll_weight`` from the recipe's ``cpo`` section (0.1 and 1 in the
paper; TRL's ``CPOTrainer`` with ``cpo_alpha``). Both sequences of a triplet are one example of the token store
(with its ``segments``), so they are packed into the same micro-batch, and the packed row numbers its sequences
(``sequence_ids``): preferred = even, dis-preferred = odd. The trainer knows none of this: it calls
:func:`objective`. The per-token log-probabilities (chunked, never the whole fp32 logits), their per-sequence
sums and the preference term are :mod:`xllama.train.loss`'s ``token_logprobs``, ``sequence_logprobs`` and
``cpo_loss``. Logged per step: the loss, its two terms, ``preference_accuracy`` (share of triplets with
log p(y_w|x) > log p(y_l|x)) and ``reward_margin`` (mean of beta * (log p(y_w|x) - log p(y_l|x))).

Keys of the recipe's ``data`` section::

    preference: LOCATION or [LOCATIONS]   # triplet files, candidate files, or the ALMA-R Hub layout (below)
    scorer: kiwi_xcomet                    # which score column of the ALMA-R layout ranks its candidates
    directions: both                       # both | x-en | en-x (filters every source)
    languages: [de, zh]                    # keep only directions with these languages
    guard: [flores200]                     # evaluation sets whose sentences must not be trained on
    size: 2000                             # seeded sub-sample of the triplets
    seed: 42

Record layouts (JSON array, JSONL or parquet files, or a folder of them, its manifest.json skipped; errors name
the file and line):

- triplet: ``{"direction": "de-en", "source": ..., "preferred": ..., "dispreferred": ...}`` (what
  ``xllama data preference`` writes; extra fields are kept out of training);
- candidates: ``{"direction": "de-en", "source": ..., "candidates": [{"text": ..., "score": ...}, ...]}``:
  the best-scored is preferred, the worst dis-preferred (a tie between them drops the record, counted);
- ALMA-R (``hf:haoranxu/ALMA-R-Preference:de-en``, one config per pair): ``{"translation": {"language_pair":
  "de-en", "de": ..., "en": ..., "gpt4_de": ..., "alma_de": ..., "ref_de_kiwi_xcomet": ..., "gpt4_de_kiwi_xcomet":
  ..., "alma_de_kiwi_xcomet": ..., ..., "Delta": ..., "required_directions": ""}}``: per direction the reference
  and the GPT-4 and ALMA translations are the candidates, ranked by ``scorer``; a non-zero ``Delta`` (human
  preference between GPT-4 and ALMA) decides instead, as in ALMA's own code; ``required_directions`` restricts
  the directions a record is used for.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from xllama.errors import XllamaError

log = logging.getLogger(__name__)

TASK = "alma-cpo"
FORMAT = "xllama-alma-preference"
KEYS = ("mix", "preference", "scorer", "directions", "languages", "guard", "size", "seed")
SCORERS = ("kiwi_xcomet", "kiwi", "xcomet")
RECORD_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
COLUMNS = ("src", "tgt", "source", "preferred", "dispreferred")


@dataclass
class PreferenceSpec:
    locations: list[str]
    scorer: str = "kiwi_xcomet"
    directions: str = "both"
    languages: list[str] | None = None
    guard: list[str] = field(default_factory=list)
    size: int | None = None
    seed: int = 42


def parse_spec(recipe_or_data, where: str = "recipe.data") -> PreferenceSpec:
    """Validate an ``alma-cpo`` recipe's ``data`` section (or the dict itself)."""
    from xllama.alma.data import DIRECTIONS
    from xllama.data.fields import integer as _int
    from xllama.data.fields import language_list as _languages
    from xllama.data.fields import locations as _locations

    data = recipe_or_data if isinstance(recipe_or_data, dict) else recipe_or_data.data
    if not isinstance(data, dict):
        raise XllamaError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in KEYS:
            raise XllamaError(f"{where}.{key}: unknown key for task {TASK}; expected one of {', '.join(KEYS)}")
    if data.get("mix", "alma") != "alma":
        raise XllamaError(f"{where}.mix: {data['mix']!r}: {TASK} recipes take mix: alma or no mix key")
    if data.get("preference") is None:
        raise XllamaError(f"{where}.preference: no preference data; give triplet files (xllama data preference "
                          "writes them) or hf:haoranxu/ALMA-R-Preference:de-en")
    scorer = data.get("scorer", "kiwi_xcomet")
    if scorer not in SCORERS:
        raise XllamaError(f"{where}.scorer: {scorer!r} is not one of {', '.join(SCORERS)}")
    directions = data.get("directions", "both")
    if directions not in DIRECTIONS:
        raise XllamaError(f"{where}.directions: {directions!r} is not one of {', '.join(DIRECTIONS)}")
    languages = _languages(data.get("languages"), f"{where}.languages")
    size = data.get("size")
    return PreferenceSpec(
        locations=_locations(data["preference"], f"{where}.preference"),
        scorer=scorer,
        directions=directions,
        languages=languages,
        guard=_locations(data["guard"], f"{where}.guard") if data.get("guard") else [],
        size=None if size is None else _int(size, f"{where}.size", minimum=1),
        seed=_int(data.get("seed", 42), f"{where}.seed", minimum=0),
    )


# ----------------------------------------------------------------------------------------------------------
# Reading preference records
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Triplet:
    src: str
    tgt: str
    source: str
    preferred: str
    dispreferred: str
    origin: str  # "file: line N" / "hf:...: row N"


def _field(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise XllamaError(f"{where}: missing field {key!r} (fields: {', '.join(sorted(record))})")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise XllamaError(f"{where}: field {key!r} should be a non-empty string, got {value!r}")
    return value.strip()


def _direction(record: dict, where: str) -> tuple[str, str]:
    from xllama.languages import parse_pair

    text = _field(record, "direction", where)
    try:
        return parse_pair(text)
    except XllamaError as e:
        raise XllamaError(f"{where}: field 'direction': {e}") from None


def _best_and_worst(candidates: list[tuple[str, float]]) -> tuple[str, str]:
    """(highest-scored text, lowest-scored text); the first one wins a tie (as in ALMA's code)."""
    scores = [score for _, score in candidates]
    return candidates[scores.index(max(scores))][0], candidates[scores.index(min(scores))][0]


def triplet_from_record(record: dict, where: str) -> Triplet | None:
    """A triplet or candidates record -> Triplet (None: the candidates' best and worst are the same text)."""
    from xllama.data.guard import normalize

    src, tgt = _direction(record, where)
    source = _field(record, "source", where)
    if "candidates" in record:
        raw = record["candidates"]
        if not isinstance(raw, list) or len(raw) < 2:
            n = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise XllamaError(f"{where}: field 'candidates' needs at least two candidates, got {n}")
        candidates = []
        for k, c in enumerate(raw, 1):
            at = f"{where}: candidate {k}"
            if not isinstance(c, dict):
                raise XllamaError(f"{at}: expected {{'text': ..., 'score': ...}}, got {c!r}")
            score = c.get("score")
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise XllamaError(f"{at}: field 'score' should be a number, got {score!r}")
            candidates.append((_field(c, "text", at), float(score)))
        preferred, dispreferred = _best_and_worst(candidates)
        if normalize(preferred) == normalize(dispreferred):
            return None
    else:
        preferred = _field(record, "preferred", where)
        dispreferred = _field(record, "dispreferred", where)
        if normalize(preferred) == normalize(dispreferred):
            raise XllamaError(f"{where}: 'preferred' and 'dispreferred' are the same text; a preference pair "
                              "needs two different translations")
    return Triplet(src, tgt, source, preferred, dispreferred, where)


def triplets_from_alma_r(record: dict, where: str, scorer: str) -> tuple[list[Triplet], int]:
    """The ALMA-R layout: up to two triplets (one per direction) -> (triplets, directions without contrast)."""
    from xllama.data.guard import normalize

    row = record.get("translation")
    if not isinstance(row, dict):
        raise XllamaError(f"{where}: field 'translation' should be a mapping, got {type(row).__name__}")
    pair = _field(row, "language_pair", f"{where}: translation")
    a, _, b = pair.partition("-")
    required = (row.get("required_directions") or "").strip()
    out, ties = [], 0
    for src, tgt in ((a, b), (b, a)):
        if required and required != f"{src}-{tgt}":
            continue
        at = f"{where} ({src}-{tgt})"
        if row.get(src) is None or row.get(tgt) is None:
            raise XllamaError(f"{at}: missing field 'translation.{src}' or 'translation.{tgt}'")
        source = _field(row, src, f"{at}: translation")
        delta = row.get("Delta") or 0
        if delta and row.get(f"gpt4_{tgt}") and row.get(f"alma_{tgt}"):  # a human judgement decides
            gpt4, alma = row[f"gpt4_{tgt}"].strip(), row[f"alma_{tgt}"].strip()
            preferred, dispreferred = (gpt4, alma) if delta > 0 else (alma, gpt4)
        else:
            candidates = []
            for text_key, score_key in ((tgt, f"ref_{tgt}_{scorer}"), (f"gpt4_{tgt}", f"gpt4_{tgt}_{scorer}"),
                                        (f"alma_{tgt}", f"alma_{tgt}_{scorer}")):
                text, score = row.get(text_key), row.get(score_key)
                if isinstance(text, str) and text.strip() and isinstance(score, (int, float)):
                    candidates.append((text.strip(), float(score)))
            if len(candidates) < 2:
                raise XllamaError(f"{at}: fewer than two scored candidates for {tgt} (need the texts {tgt}, "
                                  f"gpt4_{tgt}, alma_{tgt} and their {scorer} scores, e.g. ref_{tgt}_{scorer})")
            preferred, dispreferred = _best_and_worst(candidates)
        if normalize(preferred) == normalize(dispreferred):
            ties += 1
            continue
        out.append(Triplet(src, tgt, source, preferred, dispreferred, at))
    return out, ties


def read_preferences(location: str, scorer: str = "kiwi_xcomet") -> tuple[list[Triplet], dict]:
    """All triplets of one location (a file, a folder of files, or hf:owner/name[:config]) -> (triplets,
    provenance with counts)."""
    from xllama.data.hub import load_hub_dataset, parse_location
    from xllama.data.sources import _suffix, file_info, natural_key, read_records

    hub = parse_location(location) if location.startswith("hf:") else None
    if hub is not None:
        repo, config = hub
        rows = load_hub_dataset(repo, config, "train")
        records = ((f"{location}: row {n}", r) for n, r in enumerate(rows, 1))
        provenance = {"location": location, "hub": repo, "config": config, "split": "train"}
    else:
        path = Path(location).expanduser()
        if not path.exists():
            raise XllamaError(f"preference data not found: {location}")
        files = sorted((p for p in path.iterdir() if p.is_file() and _suffix(p) in RECORD_SUFFIXES
                        and p.name != "manifest.json"), key=natural_key) if path.is_dir() else [path]
        if not files:
            raise XllamaError(f"no {', '.join(RECORD_SUFFIXES)} files in {path}")
        for f in files:
            if _suffix(f) not in RECORD_SUFFIXES:
                raise XllamaError(f"{f}: preference records must be {', '.join(RECORD_SUFFIXES)}")
        records = ((f"{f}: {label}", r) for f in files for label, r in read_records(f)[0])
        provenance = {"location": location, "files": [file_info(f) for f in files]}
    triplets, ties, n = [], 0, 0
    for where, record in records:
        n += 1
        if not isinstance(record, dict):
            raise XllamaError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "translation" in record:
            found, tied = triplets_from_alma_r(record, where, scorer)
            triplets += found
            ties += tied
        else:
            t = triplet_from_record(record, where)
            if t is None:
                ties += 1
            else:
                triplets.append(t)
    if n == 0:
        raise XllamaError(f"no preference records in {location}")
    provenance.update(records=n, triplets=len(triplets), no_contrast=ties)
    return triplets, provenance


# ----------------------------------------------------------------------------------------------------------
# The task-module interface (xllama.train.data.TASK_MODULES)
# ----------------------------------------------------------------------------------------------------------


def load_text(recipe):
    """The triplets of the recipe -> (Dataset[src, tgt, source, preferred, dispreferred], manifest)."""
    return load_preferences(parse_spec(recipe))


def load_preferences(spec: PreferenceSpec):
    import pyarrow as pa
    from datasets import Dataset

    from xllama.data.guard import ContaminationGuard, GuardReport, guard_manifest, normalize
    from xllama.data.mix import manifest as data_manifest
    from xllama.data.sample import draw
    from xllama.data.sources import load_guard

    started = time.perf_counter()
    triplets, sources = [], []
    for location in spec.locations:
        found, provenance = read_preferences(location, spec.scorer)
        triplets += found
        sources.append(provenance)

    def wanted(t: Triplet) -> bool:
        if spec.directions == "x-en" and t.tgt != "en" or spec.directions == "en-x" and t.src != "en":
            return False
        return spec.languages is None or any(lang in spec.languages for lang in (t.src, t.tgt) if lang != "en")

    kept = [t for t in triplets if wanted(t)]
    removed = {"direction": len(triplets) - len(kept), "duplicates": 0, "contamination": 0}
    report = None
    if spec.guard:
        languages = sorted({lang for t in kept for lang in (t.src, t.tgt) if lang != "en"})
        report = GuardReport(ContaminationGuard([load_guard(location, languages) for location in spec.guard]))
    clean, seen = [], set()
    for t in kept:
        key = (t.src, t.tgt, normalize(t.source), normalize(t.preferred), normalize(t.dispreferred))
        if key in seen:
            removed["duplicates"] += 1
        elif report is not None and report.contaminated("preference", t.origin, *key[2:]):
            removed["contamination"] += 1
        else:
            seen.add(key)
            clean.append(t)
    if not clean:
        raise XllamaError("no preference triplets left after filtering (directions, languages, duplicates, guard) "
                          f"of {len(triplets)} read from {', '.join(spec.locations)}")
    index, sampling = draw(list(range(len(clean))), spec.size, spec.seed, "preference")
    chosen = [clean[i] for i in index]
    digest = hashlib.blake2b(digest_size=16)
    columns = {c: [] for c in COLUMNS}
    by_direction: dict[str, int] = {}
    for t in chosen:
        for c in COLUMNS:
            columns[c].append(getattr(t, c))
        digest.update("\t".join(getattr(t, c) for c in COLUMNS).encode("utf-8") + b"\n")
        by_direction[f"{t.src}-{t.tgt}"] = by_direction.get(f"{t.src}-{t.tgt}", 0) + 1
    manifest = data_manifest(
        FORMAT, len(chosen), COLUMNS, digest.hexdigest(), started, task=TASK,
        by_direction=dict(sorted(by_direction.items())), read=len(triplets), removed=removed, scorer=spec.scorer,
        sources=sources, guard=[g.provenance for g in report.guard.sets] if report else [],
        **guard_manifest(report), sampling=sampling, seed=spec.seed,
    )
    dataset = Dataset(pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()}))
    return dataset, manifest


def texts(dataset):
    """Raw strings of the triplets (for training a tokenizer)."""
    for batch in dataset.iter(batch_size=2000):
        for values in zip(batch["source"], batch["preferred"], batch["dispreferred"]):
            yield from values


def tokenize(dataset, tokenizer, recipe, writer, batch_size: int = 2000) -> dict:
    """Triplets -> one store example each, written to ``writer`` batch by batch: token ids = prompt + " " + y_w +
    EOS then prompt + " " + y_l + EOS, with segments ((len, prompt len) of each sequence: the store packs both as
    one unit). A triplet with a sequence longer than ``train.max_length`` is dropped (and counted), never cut."""
    from xllama.data.tokenize import encode_prompted
    from xllama.prompts import alma_prompt

    max_length, budget = recipe.train.max_length, recipe.train.micro_batch_tokens
    if budget < 2 * max_length:
        raise XllamaError(f"train.micro_batch_tokens ({budget}) must be at least 2 x train.max_length "
                          f"({2 * max_length}) for {TASK}: both sequences of a triplet go in one micro-batch")
    stats = {"task": TASK, "examples": 0, "dropped_too_long": 0, "boundary_merged": 0,
             "preferred_target_tokens": 0, "dispreferred_target_tokens": 0}
    for rows in dataset.select_columns(list(COLUMNS)).iter(batch_size=batch_size):
        prompts = [alma_prompt(s, t, x) for s, t, x in zip(rows["src"], rows["tgt"], rows["source"])]
        win, win_p, win_kept, win_stats = encode_prompted(tokenizer, prompts, rows["preferred"], max_length)
        lose, lose_p, lose_kept, lose_stats = encode_prompted(tokenizer, prompts, rows["dispreferred"],
                                                                  max_length)
        w, l_ = dict(zip(win_kept, zip(win, win_p))), dict(zip(lose_kept, zip(lose, lose_p)))
        ids, plen, segments = [], [], []
        for i in range(len(prompts)):
            if i in w and i in l_:
                (a, pa), (b, pb) = w[i], l_[i]
                ids.append(a + b)
                plen.append(pa)
                segments.append(((len(a), pa), (len(b), pb)))
                stats["preferred_target_tokens"] += len(a) - pa
                stats["dispreferred_target_tokens"] += len(b) - pb
        writer.add(ids, plen, segments)
        stats["examples"] += len(ids)
        stats["dropped_too_long"] += len(prompts) - len(ids)
        stats["boundary_merged"] += win_stats["boundary_merged"] + lose_stats["boundary_merged"]
    if not stats["examples"]:
        raise XllamaError(f"no triplet fits in train.max_length={max_length} tokens")
    if stats["dropped_too_long"]:
        log.warning("%d triplets with a sequence longer than %d tokens were dropped", stats["dropped_too_long"],
                    max_length)
    return stats


# ----------------------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------------------


class CPO:
    """The CPO objective for the trainer (see :class:`xllama.train.trainer.TokenCrossEntropy` for the protocol)."""

    def __init__(self, beta: float = 0.1, nll_weight: float = 1.0, chunk_tokens: int = 4096):
        self.beta, self.nll_weight, self.chunk_tokens = beta, nll_weight, chunk_tokens

    def step_totals(self, store, examples) -> dict:
        """Triplets and preferred target tokens in the whole step (every rank computes the same)."""
        if store.segments is None:
            raise XllamaError(f"{TASK}: the token store holds no triplets (no segments.json); "
                              "rebuild the run's data (a new --out)")
        chosen = 0
        for i in examples:
            n, p = store.segments[i][0]
            chosen += n - max(p, 1)
        return {"triplets": len(examples), "chosen_tokens": chosen}

    def __call__(self, model, row: dict, totals: dict):
        from xllama.train.loss import cpo_loss, sequence_logprobs, token_logprobs

        token_logps = token_logprobs(model, row, self.chunk_tokens)  # chunked: never the whole fp32 logits
        seq_logps = sequence_logprobs(token_logps, row["sequence_ids"])
        pairs = seq_logps.shape[0] // 2  # a filler micro-batch has one empty sequence: no pair
        chosen, rejected = seq_logps[0 : 2 * pairs : 2], seq_logps[1 : 2 * pairs : 2]
        preference = cpo_loss(chosen, rejected, self.beta).sum()
        seq = row["sequence_ids"].flatten()
        on_chosen = (seq % 2 == 0) & (seq < 2 * pairs)
        nll = -(token_logps * on_chosen).sum()
        loss = preference / max(totals["triplets"], 1) + self.nll_weight * nll / max(totals["chosen_tokens"], 1)
        margin = (chosen - rejected).detach()
        sums = {"preference": preference.detach(), "nll": nll.detach(), "correct": (margin > 0).sum(),
                "margin": self.beta * margin.sum(), "chosen_logp": chosen.detach().sum(),
                "rejected_logp": rejected.detach().sum()}
        return loss, sums

    def metrics(self, sums: dict, totals: dict) -> dict:
        n, tokens = max(totals["triplets"], 1), max(totals["chosen_tokens"], 1)
        return {
            "loss": sums["preference"] / n + self.nll_weight * sums["nll"] / tokens,
            "preference_loss": sums["preference"] / n,
            "nll_loss": sums["nll"] / tokens,
            "preference_accuracy": sums["correct"] / n,
            "reward_margin": sums["margin"] / n,
            "chosen_logp": sums["chosen_logp"] / n,
            "rejected_logp": sums["rejected_logp"] / n,
        }


def objective(recipe) -> CPO:
    """The trainer's objective for this task, configured by the recipe's ``cpo`` section."""
    return CPO(beta=recipe.cpo.beta, nll_weight=recipe.cpo.nll_weight, chunk_tokens=recipe.train.loss_chunk_tokens)
