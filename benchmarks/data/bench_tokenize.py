"""Examples/s of tokenisation with response-only label masks: xllama's way vs the reference code's way.

Data: the x-LLaMA Chinese mix built by xllama's own mixer from the shared data (Alpaca en + Alpaca zh + ALMA
zh-en pairs posed as en->zh translation instructions, FLORES-101/XQuAD guard), first ``--examples`` rows.
Tokenizer: the shared SmolLM2 tokenizer (``xllama.modeling.load_tokenizer`` on the GGUF file).

- xllama: ``xllama.data.tokenize.encode_pairs``: prompts and responses tokenised separately, in large batches,
  by the Rust fast tokenizer; the mask is the prompt length (labels = -100 over the prompt). The Alpaca
  template's ids are computed once and spliced around the tokenised instruction/input where that is exact.
- before: ``encode_pairs`` as it was before the template splicing (copied below as ``previous_encode_pairs``):
  whole prompts tokenised. Its ids and prompt lengths must equal the new code's on every row, or the run fails.
- pipeline: ``tokenize_instructions`` writing a token store (``StoreWriter``), the trainer's data stage.
- tokenizer alone: the Rust tokenizer's ``encode_batch_fast`` on exactly the texts ``encode_pairs`` gives it (the
  spliced prompts' cores and the responses, same batches), ids read into Python and nothing else: the floor of
  any tokenisation of these examples on this machine, so xllama's figures can be read as a share of it.
- fresh: the pipeline and the floor again, each in a process of its own that has loaded only the rows (saved and
  memory-mapped, as ``xllama train`` reads RUN/data) and the tokenizer, taking turns: the conditions of the
  trainer's data stage, without this benchmark's other results (millions of Python ints) in memory.
- reference: Stanford Alpaca's ``preprocess`` (copied by x-LLM): a *slow* pure-Python tokenizer, one string at
  a time, tokenising the source and source+target separately and masking ``len(tokenize(source))`` tokens.
  The slow tokenizer is a ``transformers.GPT2Tokenizer`` built from the fast tokenizer's own vocab and merges
  (checked to give the same ids on every text of the reference subsample). It is slow, so it is timed on the
  first ``--reference-examples`` examples of the same rows; both are reported in examples/s.

All ways run in the same process, ``--repeats`` times each (median reported), with wall and CPU time (CPU time
is less sensitive to other processes on a shared machine); the tokenizer alone, before, xllama and the pipeline
take turns (tokenizer alone, before, xllama, pipeline, tokenizer alone, ...), so a change in the machine's load
falls on all four alike. Then the labels of the two ways are compared: on the reference subsample against the
slow tokenizer's real output, and on all rows with the reference's rule applied by the fast tokenizer.

    python benchmarks/data/bench_tokenize.py                      # 100K examples, reference on 2,000
    python benchmarks/data/bench_tokenize.py --examples 20000 --reference-examples 500 --repeats 1

Prints a Markdown table; ``--json FILE`` also writes every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a checkout without installing

from benchmarks.common import cpu_name, zh_mix_spec  # noqa: E402
from xllama.io import atomic_write_json, shared_dir  # noqa: E402

IGNORE_INDEX = -100


# --- data and tokenizers -----------------------------------------------------------------------------------

def build_zh_mix(shared: Path):
    from xllama.data.mix import MixSpec, build_mix

    return build_mix(MixSpec.from_dict(zh_mix_spec(shared), where="benchmark mix"), progress=False)


def slow_tokenizer_like(fast, workdir: Path):
    """A pure-Python ``GPT2Tokenizer`` with the fast tokenizer's byte-level BPE (vocab, merges, special tokens)."""
    from transformers import GPT2Tokenizer

    spec = json.loads(fast.backend_tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise SystemExit(f"the slow reference needs a byte-level BPE (GPT-2 regex); got model {model.get('type')}, "
                         f"pre-tokenizer {pre.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (workdir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    # GPT2Tokenizer skips the first line (a version header) and the last one (empty after the final newline).
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = [t["content"] for t in spec["added_tokens"] if t.get("special")]
    named = {fast.bos_token, fast.eos_token, fast.pad_token, fast.unk_token}
    return GPT2Tokenizer(
        str(workdir / "vocab.json"), str(workdir / "merges.txt"),
        unk_token=fast.unk_token or fast.eos_token, bos_token=fast.bos_token or fast.eos_token,
        eos_token=fast.eos_token, pad_token=fast.pad_token,
        additional_special_tokens=[t for t in specials if t not in named],
        add_prefix_space=False, add_bos_token=bool(getattr(fast, "add_bos_token", False)),
    )


# --- the ways -------------------------------------------------------------------------------------------------

def previous_batch_encode(tokenizer, texts, add_special_tokens):
    """``xllama.data.tokenize.batch_encode`` before the template splicing (the baseline), verbatim."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if getattr(tokenizer, "is_fast", False) and hasattr(backend, "encode_batch_fast"):
        if backend.padding is not None or backend.truncation is not None:
            backend.no_padding()
            backend.no_truncation()
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
    return tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False)["input_ids"]


def previous_encode_pairs(tokenizer, prompts, responses, max_length, add_eos=True):
    """``xllama.data.tokenize.encode_pairs`` before the template splicing (the baseline), verbatim: every prompt
    is tokenised whole. Returns (ids, prompt lengths, None): the stats object is not needed here."""
    enc_p = previous_batch_encode(tokenizer, prompts, add_special_tokens=True)
    enc_r = previous_batch_encode(tokenizer, responses, add_special_tokens=False)
    eos = [tokenizer.eos_token_id] if add_eos else []
    ids_out, plen_out = [], []
    for p, r in zip(enc_p, enc_r):
        ids = p + r + eos
        if len(ids) > max_length:
            ids = ids[:max_length]
        if len(ids) <= len(p):
            continue
        ids_out.append(ids)
        plen_out.append(len(p))
    return ids_out, plen_out, None


def xllama_way(tokenizer, instructions, inputs, outputs, max_length, batch_size=2000, encode=None):
    """xllama: Alpaca prompts, then ``encode_pairs`` (or ``encode``, e.g. the previous version; batched Rust
    tokenizer; the mask is the prompt length), in batches of ``tokenize_instructions``' default size."""
    from xllama.data.tokenize import encode_pairs
    from xllama.prompts import alpaca_prompt

    encode = encode or encode_pairs
    ids, prompt_lengths = [], []
    for k in range(0, len(outputs), batch_size):
        prompts = [alpaca_prompt(i, x) for i, x in zip(instructions[k:k + batch_size], inputs[k:k + batch_size])]
        batch_ids, batch_lengths, _ = encode(tokenizer, prompts, outputs[k:k + batch_size], max_length)
        ids += batch_ids
        prompt_lengths += batch_lengths
    return ids, prompt_lengths


def tokenizer_texts(tokenizer, instructions, inputs, outputs, batch_size=2000) -> list[list[str]]:
    """Per batch, exactly the texts ``encode_pairs`` hands the Rust tokenizer: the spliced prompts' cores, then the
    responses (a prompt that cannot be spliced goes whole)."""
    from xllama.data.tokenize import _fast_backend, _splicer_for
    from xllama.prompts import alpaca_prompt

    splicer = _splicer_for(tokenizer, _fast_backend(tokenizer))
    batches = []
    for k in range(0, len(outputs), batch_size):
        prompts = [alpaca_prompt(i, x) for i, x in zip(instructions[k:k + batch_size], inputs[k:k + batch_size])]
        splits = [splicer.split(p) if splicer else None for p in prompts]
        batches.append([p if s is None else s[1] for p, s in zip(prompts, splits)] + outputs[k:k + batch_size])
    return batches


def tokenizer_alone(tokenizer, batches: list[list[str]]) -> int:
    """The floor of any tokenisation on this machine: the Rust tokenizer's ``encode_batch_fast`` on those texts
    and their ids read into Python, nothing else (no prompt building, no masks, no length checks)."""
    backend = tokenizer.backend_tokenizer
    return sum(len(e.ids) for texts in batches for e in backend.encode_batch_fast(texts, add_special_tokens=False))


FRESH_CHILD = """
import json, sys, time
from pathlib import Path

from datasets import load_from_disk

from xllama.data.tokenize import tokenize_instructions
from xllama.modeling import load_tokenizer
from xllama.train.store import StoreWriter

way, text, tokenizer_spec, max_length, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
dataset, tokenizer = load_from_disk(text), load_tokenizer(tokenizer_spec)
start, start_cpu = time.perf_counter(), time.process_time()
if way == "pipeline":  # the trainer's data stage: the run's text (memory-mapped) -> RUN/store
    with StoreWriter(Path(out), len(tokenizer), progress=False) as writer:
        writer.stats = tokenize_instructions(dataset, tokenizer, max_length, writer)
else:  # the floor: the same texts, the Rust tokenizer alone
    sys.path.insert(0, sys.argv[6])
    from benchmarks.data.bench_tokenize import tokenizer_alone, tokenizer_texts

    rows = dataset.to_dict()
    texts = tokenizer_texts(tokenizer, rows["instruction"], rows["input"], rows["output"])
    start, start_cpu = time.perf_counter(), time.process_time()
    tokenizer_alone(tokenizer, texts)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}))
"""


def fresh_process(way: str, text: Path, tokenizer_spec: str, max_length: int, out: Path) -> tuple[float, float]:
    """(wall, CPU seconds) of ``way`` ("pipeline" or "floor") in a process of its own that has loaded only the
    run's text (``save_to_disk`` of the rows, memory-mapped as ``xllama train`` reads RUN/data) and the
    tokenizer: the conditions of the trainer's data stage, without this benchmark's other results in memory."""
    import subprocess

    root = str(HERE.parent.parent)
    done = subprocess.run([sys.executable, "-c", FRESH_CHILD, way, str(text), tokenizer_spec, str(max_length),
                           str(out), root], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    if done.returncode != 0:
        raise SystemExit(f"fresh-process {way} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["cpu_seconds"]


def xllama_pipeline(tokenizer, dataset, max_length, directory: Path):
    """xllama's data stage as the trainer runs it: ``tokenize_instructions`` into a ``StoreWriter`` (a token store
    on disk: tokens.bin, offsets, prompt lengths). Returns the store's directory."""
    from xllama.data.tokenize import tokenize_instructions
    from xllama.train.store import StoreWriter

    with StoreWriter(directory, len(tokenizer), progress=False) as writer:
        writer.stats = tokenize_instructions(dataset, tokenizer, max_length, writer)
    return directory


def store_equals(directory: Path, ids, prompt_lengths) -> bool:
    """Whether the token store holds exactly these examples (ids and prompt lengths, in order)."""
    import itertools

    import numpy as np

    from xllama.train.store import open_store

    store = open_store(directory)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return (len(store.offsets) == len(ids) + 1 and np.array_equal(np.diff(store.offsets), lengths)
            and np.array_equal(np.asarray(store.ids, dtype=np.int64), flat)
            and np.array_equal(np.asarray(store.prompt_lengths), np.asarray(prompt_lengths)))


def label_lists(ids, prompt_lengths):
    """What xllama's collation derives from (ids, prompt_length): labels with the prompt set to -100."""
    return [[IGNORE_INDEX] * p + x[p:] for x, p in zip(ids, prompt_lengths)]


def reference_way(tokenizer, instructions, inputs, outputs, max_length):
    """Stanford Alpaca's ``preprocess`` (train.py, as copied by x-LLM), step for step: one string at a time,
    ``return_tensors="pt"``, source and source+target tokenised separately, ``len(source)`` tokens masked."""
    from xllama.prompts import alpaca_prompt

    def tokenize_fn(strings):
        tokenized_list = [
            tokenizer(text, return_tensors="pt", padding="longest", max_length=max_length, truncation=True)
            for text in strings
        ]
        input_ids = [tokenized.input_ids[0] for tokenized in tokenized_list]
        input_ids_lens = [tokenized.input_ids.ne(tokenizer.pad_token_id).sum().item() for tokenized in tokenized_list]
        return input_ids, input_ids_lens

    sources = [alpaca_prompt(i, x) for i, x in zip(instructions, inputs)]
    targets = [f"{output}{tokenizer.eos_token}" for output in outputs]
    examples = [s + t for s, t in zip(sources, targets)]
    input_ids, _ = tokenize_fn(examples)
    _, source_lens = tokenize_fn(sources)
    labels = copy.deepcopy(input_ids)
    for label, source_len in zip(labels, source_lens):
        label[:source_len] = IGNORE_INDEX
    return input_ids, labels


def reference_rule_fast(tokenizer, instructions, inputs, outputs, max_length):
    """The reference's labels computed with the fast tokenizer (batched): joint ids, len(source) masked.
    Returns ([(ids, labels)], source token counts before truncation)."""
    from xllama.data.tokenize import batch_encode
    from xllama.prompts import alpaca_prompt

    sources = [alpaca_prompt(i, x) for i, x in zip(instructions, inputs)]
    joint = batch_encode(tokenizer, [s + o + tokenizer.eos_token for s, o in zip(sources, outputs)], True)
    source_ids = batch_encode(tokenizer, sources, True)
    out = []
    for ids, src in zip(joint, source_ids):
        ids = ids[:max_length]
        n = min(len(src), max_length)
        out.append((ids, [IGNORE_INDEX] * n + ids[n:]))
    return out, [len(src) for src in source_ids]


# --- comparison ----------------------------------------------------------------------------------------------

def compare(reference: list[tuple[list[int], list[int]]], xllama_ids, xllama_plen, prompt_tokens: list[int],
            max_length: int, tokenizer) -> dict:
    """Classify every example: same ids and labels; dropped by xllama (its prompt alone fills max_length);
    first difference within 2 tokens of the prompt/response boundary (separate vs joint tokenisation); other."""
    counts = {"same_labels": 0, "xllama_dropped": 0, "boundary": 0, "other": 0}
    samples = []
    kept = iter(zip(xllama_ids, xllama_plen))  # encode_pairs keeps the order and drops prompts >= max_length
    for j, (ref_ids, ref_labels) in enumerate(reference):
        if prompt_tokens[j] >= max_length:
            counts["xllama_dropped"] += 1
            continue
        ids, p = next(kept)
        labels = [IGNORE_INDEX] * p + ids[p:]
        if ids == ref_ids and labels == ref_labels:
            counts["same_labels"] += 1
            continue
        first = min(_first_difference(ids, ref_ids), _first_difference(labels, ref_labels))
        kind = "boundary" if abs(first - p) <= 2 else "other"
        counts[kind] += 1
        if len(samples) < 5:
            a = max(p - 3, 0)
            samples.append({
                "example": j, "kind": kind, "first_difference": first, "prompt_tokens_xllama": p,
                "masked_tokens_reference": sum(1 for y in ref_labels if y == IGNORE_INDEX),
                "xllama_tokens": tokenizer.convert_ids_to_tokens(ids[a: p + 3]),
                "reference_tokens": tokenizer.convert_ids_to_tokens(ref_ids[a: p + 3]),
            })
    return {"examples": len(reference), **counts, "agreement": counts["same_labels"] / max(len(reference), 1),
            "samples": samples}


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --- timing and reporting ------------------------------------------------------------------------------------

def timed(fn, repeats: int):
    """(result, wall seconds per repeat, CPU seconds per repeat: all threads of this process)."""
    seconds, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, seconds, cpu


def timed_in_turns(fns: dict, repeats: int) -> dict:
    """Like ``timed`` for several ways, taking turns (a, b, c, a, b, c, ...): name -> (result, wall, CPU)."""
    out = {name: (None, [], []) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            result, seconds, cpu = timed(fn, 1)
            out[name] = (result, out[name][1] + seconds, out[name][2] + cpu)
    return out


def machine() -> dict:
    import tokenizers
    import transformers

    cpu = cpu_name()
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=None, help="the shared data folder (default: $XLLAMA_SHARED or ../shared)")
    parser.add_argument("--tokenizer", default=None, help="default: the shared SmolLM2 GGUF")
    parser.add_argument("--examples", type=int, default=100_000, help="rows of the mix tokenised by xllama")
    parser.add_argument("--reference-examples", type=int, default=2_000, help="rows timed with the slow reference")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timings per way (the median is reported)")
    parser.add_argument("--json", metavar="FILE", help="also write all figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from xllama.modeling import load_tokenizer

    shared = Path(args.shared) if args.shared else shared_dir()
    tokenizer_spec = args.tokenizer or str(shared / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    load_before = os.getloadavg()
    run_wall, run_cpu = time.perf_counter(), time.process_time()

    started = time.perf_counter()
    dataset, manifest = build_zh_mix(shared)
    n = min(args.examples, len(dataset))
    rows = dataset.select(range(n)).to_dict()
    instructions, inputs, outputs = rows["instruction"], rows["input"], rows["output"]
    print(f"mix: {len(dataset):,} examples {manifest['by_source']} in {time.perf_counter() - started:.1f}s; "
          f"using the first {n:,}", flush=True)

    started = time.perf_counter()
    fast = load_tokenizer(tokenizer_spec)
    print(f"tokenizer: {type(fast).__name__} from {Path(tokenizer_spec).name} in {time.perf_counter() - started:.1f}s",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:  # GPT2Tokenizer reads its files at once
        slow = slow_tokenizer_like(fast, Path(tmp))

    # xllama's way on all n examples, taking turns: the previous encode_pairs, the new one, and the trainer's
    # data stage (tokenize_instructions into a token store on disk).
    import datasets

    datasets.disable_progress_bars()
    subset = dataset.select(range(n))
    texts = tokenizer_texts(fast, instructions, inputs, outputs)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-store-") as tmp:
        store = Path(tmp) / "store"
        runs = timed_in_turns({
            "tokenizer_alone": lambda: tokenizer_alone(fast, texts),
            "before": lambda: xllama_way(fast, instructions, inputs, outputs, args.max_length,
                                         encode=previous_encode_pairs),
            "xllama": lambda: xllama_way(fast, instructions, inputs, outputs, args.max_length),
            "pipeline": lambda: xllama_pipeline(fast, subset, args.max_length, store),
        }, args.repeats)
        (ids, plen), xllama_s, xllama_cpu = runs["xllama"]
        before, before_s, before_cpu = runs["before"]
        _, pipeline_s, pipeline_cpu = runs["pipeline"]
        _, alone_s, alone_cpu = runs["tokenizer_alone"]
        # The speed-up must not change a single id: the new encode_pairs against the previous one on all rows,
        # and the trainer's token store against encode_pairs.
        identical_to_before = before == (ids, plen)
        store_identical = store_equals(store, ids, plen)
    del before
    if not (identical_to_before and store_identical):
        raise SystemExit(f"ids differ: new encode_pairs == previous: {identical_to_before}; token store == "
                         f"encode_pairs: {store_identical}")
    _, labels_s, labels_cpu = timed(lambda: label_lists(ids, plen), args.repeats)

    # The trainer's data stage and the floor again, each in a fresh process (taking turns), with the store
    # checked against encode_pairs' ids.
    fresh = {"floor": ([], []), "pipeline": ([], [])}
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-fresh-") as tmp:
        subset.save_to_disk(str(Path(tmp) / "text"))
        for turn in range(args.repeats):
            for way in fresh:
                store_dir = Path(tmp) / f"store-{turn}"
                wall, cpu = fresh_process(way, Path(tmp) / "text", tokenizer_spec, args.max_length, store_dir)
                fresh[way][0].append(wall)
                fresh[way][1].append(cpu)
        fresh_store_identical = store_equals(Path(tmp) / "store-0", ids, plen)
    if not fresh_store_identical:
        raise SystemExit("ids differ: the fresh process's token store != encode_pairs")
    print(f"xllama encode_pairs: {n:,} examples in {statistics.median(xllama_s):.2f}s, before "
          f"{statistics.median(before_s):.2f}s, pipeline {statistics.median(pipeline_s):.2f}s "
          f"(medians of {args.repeats}); identical ids and prompt lengths", flush=True)

    # The reference's way on the first m examples.
    m = min(args.reference_examples, n)
    sub = (instructions[:m], inputs[:m], outputs[:m])
    (ref_ids, ref_labels), reference_s, reference_cpu = timed(lambda: reference_way(slow, *sub, args.max_length),
                                                              args.repeats)
    print(f"reference (slow tokenizer, one at a time): {m:,} examples in {statistics.median(reference_s):.2f}s",
          flush=True)
    # Same code with the fast tokenizer: separates "slow tokenizer" from "one example at a time". On a copy:
    # `tokenizer(..., padding=..., truncation=...)` leaves padding/truncation switched on in the Rust backend,
    # which batched calls on the same tokenizer would then inherit.
    fast_copy = copy.deepcopy(fast)
    _, reference_fast_s, reference_fast_cpu = timed(lambda: reference_way(fast_copy, *sub, args.max_length),
                                                    args.repeats)
    assert fast.backend_tokenizer.padding is None and fast.backend_tokenizer.truncation is None

    # Check 1: the slow tokenizer is the same tokenizer: its ids of every source+target text equal the fast one's.
    reference_all, prompt_tokens = reference_rule_fast(fast, instructions, inputs, outputs, args.max_length)
    reference_sub = [(a.tolist(), b.tolist()) for a, b in zip(ref_ids, ref_labels)]
    slow_equal = sum(slow_ids == fast_ids for (slow_ids, _), (fast_ids, _) in zip(reference_sub, reference_all))
    # Check 2: labels, xllama vs the reference (the slow tokenizer's real output) on the subsample, and vs the
    # reference's rule applied by the fast tokenizer on all n examples.
    agreement_sub = compare(reference_sub, *xllama_way(fast, *sub, args.max_length), prompt_tokens[:m],
                            args.max_length, fast)
    agreement_all = compare(reference_all, ids, plen, prompt_tokens, args.max_length, fast)

    med = statistics.median
    ways = {  # name -> (examples, wall seconds, cpu seconds)
        "reference": (m, reference_s, reference_cpu),
        "reference_fast_tokenizer": (m, reference_fast_s, reference_fast_cpu),
        "before": (n, before_s, before_cpu),
        "xllama": (n, xllama_s, xllama_cpu),
        "xllama_with_label_lists": (n, [a + b for a, b in zip(xllama_s, labels_s)],
                                    [a + b for a, b in zip(xllama_cpu, labels_cpu)]),
        "xllama_pipeline": (n, pipeline_s, pipeline_cpu),
        "tokenizer_alone": (n, alone_s, alone_cpu),
        "fresh_pipeline": (n, *fresh["pipeline"]),
        "fresh_tokenizer_alone": (n, *fresh["floor"]),
    }
    figures = {name: {"examples": k, "seconds": wall, "cpu_seconds": cpu, "examples_per_s": k / med(wall),
                      "examples_per_cpu_s": k / med(cpu)} for name, (k, wall, cpu) in ways.items()}
    base = figures["reference"]["examples_per_s"]
    result = {
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before]},
        "run_wall_seconds": time.perf_counter() - run_wall, "run_cpu_seconds": time.process_time() - run_cpu,
        "tokenizer": tokenizer_spec, "max_length": args.max_length, "mix_examples": len(dataset),
        "mix_by_source": manifest["by_source"], "examples": n, "reference_examples": m, "repeats": args.repeats,
        **figures,
        "speedup": figures["xllama"]["examples_per_s"] / base,
        "speedup_vs_before": figures["xllama"]["examples_per_s"] / figures["before"]["examples_per_s"],
        "speedup_vs_before_cpu": figures["xllama"]["examples_per_cpu_s"] / figures["before"]["examples_per_cpu_s"],
        "share_of_tokenizer_alone": {way: figures[way]["examples_per_s"] / figures["tokenizer_alone"]["examples_per_s"]
                                     for way in ("xllama", "xllama_pipeline")},
        "fresh_share_of_tokenizer_alone": figures["fresh_pipeline"]["examples_per_s"]
        / figures["fresh_tokenizer_alone"]["examples_per_s"],
        "fresh_store_identical": fresh_store_identical,
        "identical_to_before": identical_to_before, "store_identical": store_identical,
        "slow_equals_fast": {"texts": m, "identical": slow_equal},
        "agreement_reference_subsample": agreement_sub,
        "agreement_all_reference_rule_fast": agreement_all,
    }
    mach = result["machine"]
    labels = {
        "reference": "reference: Alpaca `preprocess`, slow GPT2Tokenizer, one example at a time",
        "reference_fast_tokenizer": "same code with the fast tokenizer (for context)",
        "before": "xllama `encode_pairs` before template splicing (whole prompts), batches of 2,000",
        "xllama": "**xllama `encode_pairs`** (template spliced), batches of 2,000 (ids + prompt_length)",
        "xllama_with_label_lists": "xllama `encode_pairs` + explicit label lists",
        "xllama_pipeline": "xllama `tokenize_instructions` into a `StoreWriter` token store (the trainer's path)",
        "tokenizer_alone": "the Rust tokenizer alone on the same texts (`encode_batch_fast` + ids; the floor)",
        "fresh_pipeline": "**the trainer's path in a fresh process** (as `xllama train` runs its data stage)",
        "fresh_tokenizer_alone": "the floor in a fresh process",
    }
    lines = [
        f"x-LLaMA zh mix (shared data), SmolLM2 tokenizer, max length {args.max_length}; {mach['cpu']}, "
        f"{mach['cpu_cores']} cores, load average {load_before[0]:.1f} before, {mach['load_average'][0]:.1f} after; "
        f"whole run {result['run_wall_seconds']:.0f} s wall, {result['run_cpu_seconds']:.0f} s CPU; "
        f"median of {args.repeats} timings",
        "",
        "| way | examples timed | wall s (median; range) | CPU s | examples/s | vs reference | examples/CPU-s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in figures.items():
        eps = f["examples_per_s"]
        bold = "**" if name in ("xllama", "fresh_pipeline") else ""
        lines.append(f"| {labels[name]} | {f['examples']:,} | {med(f['seconds']):.2f} ({min(f['seconds']):.2f}–"
                     f"{max(f['seconds']):.2f}) | {med(f['cpu_seconds']):.2f} | {bold}{eps:,.0f}{bold} "
                     f"| {bold}{eps / base:.1f}x{bold} | {f['examples_per_cpu_s']:,.0f} |")
    lines += [
        "",
        f"New `encode_pairs` vs before: {result['speedup_vs_before']:.2f}x examples/s, "
        f"{result['speedup_vs_before_cpu']:.2f}x examples/CPU-s; ids and prompt lengths identical on all {n:,} rows "
        f"(and the token store's on all rows).",
        "",
        f"Against the floor (the Rust tokenizer alone on the same texts, in the same turns): `encode_pairs` runs at "
        f"{result['share_of_tokenizer_alone']['xllama']:.0%} of its examples/s, the trainer's path at "
        f"{result['share_of_tokenizer_alone']['xllama_pipeline']:.0%}. In fresh processes (taking turns): the "
        f"trainer's path at {result['fresh_share_of_tokenizer_alone']:.0%} of the floor; its store identical.",
        "",
        f"Slow tokenizer check: {slow_equal:,}/{m:,} source+target texts give ids identical to the fast tokenizer's.",
        "",
        "| labels: xllama vs | examples | same ids and labels | boundary differences | dropped by xllama | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, a in (("reference (slow tokenizer), its subsample", agreement_sub),
                    ("reference rule (fast tokenizer), all rows", agreement_all)):
        lines.append(f"| {name} | {a['examples']:,} | {a['same_labels']:,} ({a['agreement']:.2%}) | {a['boundary']:,} "
                     f"| {a['xllama_dropped']:,} | {a['other']:,} |")
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    for s in (agreement_all["samples"] or agreement_sub["samples"])[:3]:
        print(f"example {s['example']} ({s['kind']}): xllama {s['xllama_tokens']} | reference {s['reference_tokens']}")
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
