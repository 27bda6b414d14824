"""Measure how well a model's layers align translations: do a sentence and its translation land close together?

The x-LLaMA paper shows that after cross-lingual instruction tuning, English and non-English sentences line up
in the middle layers. For parallel sentences (FLORES devtest by default, or any two line-aligned files) this
command mean-pools every layer's hidden states into one vector per sentence and reports, per layer: the mean
cosine similarity of translation pairs, the same for mismatched pairs, the margin between the two, and
retrieval accuracy (is the translation the nearest neighbour among all candidates, both directions). Layer 0
is the embedding output; layer L the last block's output as transformers returns it (after the final norm).

Every metric comes twice: on the raw pooled vectors, and "centered" (each language's mean vector over the
evaluated sentences subtracted per layer, as in Libovický et al. 2020). LLM hidden states are highly
anisotropic (in SmolLM2's middle layers any two sentences have cosine 0.8-0.9), so raw margins are tiny; centering
removes the shared direction and the language-identity offset and leaves the semantic alignment.

Example: xllama align --model base/ --model tuned/ --pairs en-zh,en-de --data flores101 --out runs/align
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from xllama.distributed import gather_objects, init_distributed, is_main_process, local_device, rank_and_world, shard
from xllama.errors import XllamaError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Pooling: one vector per sentence and layer


def pool_layers(hidden_states, pool_mask):
    """Mean-pool each layer over the positions ``pool_mask`` marks: [layers][batch, seq, h] -> [layers, batch, h].

    The mean is over REAL tokens only (``pool_mask`` is 0 on padding). The x-LLM reference
    analysis (as reported in xllama issue 7) sums over the padded sequence and divides by the padded length,
    so a sentence's vector shrinks and picks up pad states depending on its batch-mates; here a sentence gets
    the same vector alone or in any batch. Pooling happens where the hidden states are (the GPU for big
    models), in float32, so only [batch, hidden] per layer ever leaves the device.
    """
    import torch

    mask = pool_mask.unsqueeze(-1).bool()
    counts = pool_mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    pooled = []
    for layer in hidden_states:
        # where(), not multiply: a fully-masked pad row may hold NaN/inf under some attention kernels
        summed = torch.where(mask, layer.float(), 0.0).sum(dim=1)
        pooled.append(summed / counts)
    return torch.stack(pooled)


@dataclass
class PooledSentences:
    vectors: object  # torch.Tensor [layers + 1, n, hidden], float32 on CPU
    mean_tokens: float  # pooled tokens per sentence
    truncated: int  # sentences cut at max_length


def _model_inputs(model):
    """The bare decoder (no LM head: its vocab-sized logits are never needed) and whether it takes position_ids."""
    base = getattr(model, "base_model", model)
    accepts_positions = "position_ids" in inspect.signature(base.forward).parameters
    return base, accepts_positions


def encode_sentences(
    model,
    tokenizer,
    sentences: list[str],
    batch_size: int = 16,
    max_length: int | None = 512,
    padding_side: str = "right",
    pool_tokens: str = "text",
    desc: str | None = None,
    where: str = "input",
) -> PooledSentences:
    """Run ``model`` over ``sentences`` in length-sorted padded batches; return per-layer mean-pooled vectors.

    ``pool_tokens``: "text" (default) averages the text tokens: padding, special tokens (BOS, EOS) and the
    first position are left out (they stay in the input, as the model expects them). The first position is
    the attention sink: its state carries "massive activations" (Sun et al. 2024; norm ~24,000 vs ~160 for
    other tokens in SmolLM2's middle layers) that would dominate the mean and make every sentence look
    alike. With a BOS token that position is the BOS; without one (SmolLM2) it is the first word.
    "all" averages every non-padding token. Position ids follow the attention mask, so left padding does not
    shift positions (which matters for models with absolute position embeddings).
    """
    import torch
    from tqdm.auto import tqdm

    if padding_side not in ("left", "right"):
        raise XllamaError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if pool_tokens not in ("text", "all"):
        raise XllamaError(f"pool_tokens must be 'text' or 'all', got {pool_tokens!r}")
    encoded = tokenizer(
        sentences,
        add_special_tokens=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
    untruncated = tokenizer(sentences, add_special_tokens=True)["input_ids"] if max_length else ids
    truncated = sum(len(full) > len(cut) for full, cut in zip(untruncated, ids))
    if pool_tokens == "all":
        keep = [[1] * len(mask) for mask in special]
    else:
        keep = [[0] + [1 - s for s in mask[1:]] for mask in special]
    for i, k in enumerate(keep):
        if sum(k) == 0:
            raise XllamaError(
                f"{where}: sentence {i + 1} has no tokens to pool (empty, or a single token: the first position is "
                f"left out; pass --pool-tokens all to keep it): {sentences[i]!r}"
            )

    base, accepts_positions = _model_inputs(model)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: memory trouble shows at once
    vectors = None
    # under `accelerate launch` each process encodes every world-th batch; the vectors are gathered below
    rank, world = rank_and_world()
    starts = shard(range(0, len(order), batch_size))
    mine = []
    with torch.inference_mode(), tqdm(total=sum(len(order[s:s + batch_size]) for s in starts), desc=desc,
                                      unit="sent", leave=False, disable=rank != 0) as bar:
        for start in starts:
            batch = order[start : start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            pool = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(ids[i])
                cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
                input_ids[row, cols] = torch.tensor(ids[i])
                attention[row, cols] = 1
                pool[row, cols] = torch.tensor(keep[i])
            kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
            if accepts_positions:
                kwargs["position_ids"] = (attention.cumsum(dim=1) - 1).clamp(min=0).to(device)
            out = base(**kwargs, output_hidden_states=True, use_cache=False, return_dict=True)
            pooled = pool_layers(out.hidden_states, pool.to(device)).cpu()
            if world > 1:
                mine.append((batch, pooled))
            else:
                if vectors is None:
                    vectors = torch.empty((pooled.shape[0], len(ids), pooled.shape[2]), dtype=torch.float32)
                vectors[:, batch] = pooled
            del out
            bar.update(len(batch))
    if world > 1:
        for part in gather_objects(mine):
            for batch, pooled in part:
                if vectors is None:
                    vectors = torch.empty((pooled.shape[0], len(ids), pooled.shape[2]), dtype=torch.float32)
                vectors[:, batch] = pooled
    mean_tokens = sum(sum(k) for k in keep) / len(keep)
    return PooledSentences(vectors, mean_tokens, truncated)


# ----------------------------------------------------------------------------------------------------------
# Metrics


def layer_metrics(src, tgt, chunk_size: int = 2048) -> dict[str, float]:
    """Alignment of one layer: ``src[i]`` and ``tgt[i]`` ([n, hidden]) are translations of each other.

    Mismatched pairs are ALL off-diagonal (i != j) pairs: exact, and cheap at FLORES size. The n x n
    similarity matrix is built ``chunk_size`` rows at a time so large files fit in memory.
    """
    import torch
    import torch.nn.functional as F

    n = src.shape[0]
    if n < 2 or tgt.shape[0] != n:
        raise XllamaError(f"need at least 2 aligned sentence pairs, got {n} and {tgt.shape[0]}")
    a = F.normalize(src.float(), dim=-1)
    b = F.normalize(tgt.float(), dim=-1)
    total = diagonal = 0.0
    hits_src_to_tgt = 0
    col_best = torch.full((n,), float("-inf"))
    col_arg = torch.zeros(n, dtype=torch.long)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        rows = torch.arange(start, stop)
        sims = a[start:stop] @ b.T  # [chunk, n]
        total += sims.sum(dtype=torch.float64).item()
        diagonal += sims[rows - start, rows].sum(dtype=torch.float64).item()
        hits_src_to_tgt += (sims.argmax(dim=1) == rows).sum().item()
        best, arg = sims.max(dim=0)
        better = best > col_best
        col_best = torch.where(better, best, col_best)
        col_arg = torch.where(better, arg + start, col_arg)
    hits_tgt_to_src = (col_arg == torch.arange(n)).sum().item()
    pair = diagonal / n
    mismatch = (total - diagonal) / (n * (n - 1))
    return {
        "pair_cosine": pair,
        "mismatch_cosine": mismatch,
        "margin": pair - mismatch,
        "retrieval_src_to_tgt": hits_src_to_tgt / n,
        "retrieval_tgt_to_src": hits_tgt_to_src / n,
    }


def alignment_metrics(src_vectors, tgt_vectors, center: bool = False) -> list[dict]:
    """Per-layer metrics for [layers, n, hidden] source and target vectors.

    ``center``: subtract each side's mean vector (over its n sentences) per layer first, so what is left is
    how a sentence differs from its language's average sentence.
    """
    if src_vectors.shape != tgt_vectors.shape:
        raise XllamaError(
            f"source and target vectors differ in shape: {tuple(src_vectors.shape)} vs {tuple(tgt_vectors.shape)}"
        )
    if center:
        src_vectors = src_vectors - src_vectors.mean(dim=1, keepdim=True)
        tgt_vectors = tgt_vectors - tgt_vectors.mean(dim=1, keepdim=True)
    return [
        {"layer": layer, **layer_metrics(src_vectors[layer], tgt_vectors[layer])}
        for layer in range(src_vectors.shape[0])
    ]


# ----------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class ParallelSet:
    name: str  # "en-zh"
    source: list[str]
    target: list[str]
    origin: dict  # where the sentences came from, for the report


def load_parallel_sets(args) -> list[ParallelSet]:
    """Every language pair's sentences, validated before any model is loaded (bad input fails in a second)."""
    from xllama.data.evalsets import load_aligned_text, load_flores
    from xllama.io import content_hash
    from xllama.languages import parse_pair

    if bool(args.src_file) != bool(args.tgt_file):
        raise XllamaError("--src-file and --tgt-file go together: give both aligned files, or neither")
    if args.src_file and args.data:
        raise XllamaError("give either --data (FLORES) or --src-file/--tgt-file, not both")
    pair_specs = [p for p in (args.pairs or "").split(",") if p.strip()]
    sets = []
    if args.src_file:
        if len(pair_specs) > 1:
            raise XllamaError(f"--src-file/--tgt-file hold one language pair; --pairs names {len(pair_specs)}")
        name = "-".join(parse_pair(pair_specs[0])) if pair_specs else "src-tgt"
        source, target = load_aligned_text(args.src_file, args.tgt_file)
        for path, lines in ((args.src_file, source), (args.tgt_file, target)):
            for lineno, line in enumerate(lines[: args.limit] if args.limit else lines, 1):
                if not line.strip():
                    raise XllamaError(f"{path}: line {lineno} is empty; every line must hold a sentence")
        origin = {"src_file": str(args.src_file), "tgt_file": str(args.tgt_file)}
        sets.append(ParallelSet(name, source, target, origin))
    else:
        data = args.data or "flores101"
        pairs = [parse_pair(p) for p in (pair_specs or ["en-zh"])]
        cache: dict[str, list[str]] = {}
        for src, tgt in pairs:
            for lang in (src, tgt):
                if lang not in cache:
                    cache[lang] = load_flores(data, lang, args.split)
            if len(cache[src]) != len(cache[tgt]):
                raise XllamaError(f"FLORES {data}: {src} has {len(cache[src])} lines but {tgt} has {len(cache[tgt])}")
            origin = {"flores": data, "split": args.split}
            sets.append(ParallelSet(f"{src}-{tgt}", cache[src], cache[tgt], origin))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise XllamaError(f"--pairs repeats a pair: {','.join(names)}")
    for s in sets:
        if args.limit:
            s.source, s.target = s.source[: args.limit], s.target[: args.limit]
        if len(s.source) < 2:
            raise XllamaError(f"{s.name}: need at least 2 sentence pairs to compare, got {len(s.source)}")
        s.origin = {**s.origin, "sentences": len(s.source), "hash": content_hash(zip(s.source, s.target))}
    return sets


def model_labels(specs: list[str], labels: list[str] | None) -> list[str]:
    """Short names for the legend: the GGUF file stem, the checkpoint folder (with its parent for
    ``checkpoint-N``) or the Hub id; repeats get a ``#2`` suffix."""
    if labels:
        if len(labels) != len(specs):
            raise XllamaError(f"--label given {len(labels)} times for {len(specs)} --model; give one per model or none")
        names = list(labels)
    else:
        names = []
        for spec in specs:
            path = Path(spec)
            if path.suffix == ".gguf":
                names.append(path.stem)
            elif path.exists():
                path = path.resolve()
                names.append(f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint") else path.name)
            else:
                names.append(spec)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


# ----------------------------------------------------------------------------------------------------------
# Plot


def plot_alignment(report: dict, path: str | os.PathLike) -> None:
    """One curve per (model, pair) across layers: cosine (dotted: mismatched), margin, retrieval accuracy;
    top row on the raw vectors, bottom row centered.

    Color tells curves apart, the marker tells models apart (base vs tuned stays readable in greyscale).
    Written atomically; uses matplotlib's object API (no pyplot), so no display or global backend is touched.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = [(m["label"], name, pair) for m in report["models"] for name, pair in m["pairs"].items()]
    markers = "osD^vP*Xh<>"
    model_names = list(dict.fromkeys(label for label, _, _ in curves))
    fig = Figure(figsize=(17, 10), layout="constrained")
    grid = fig.subplots(2, 3, sharex=True)
    panels = [
        ("cosine (solid: translations, dotted: mismatched)", "cosine similarity"),
        ("margin: translation − mismatched cosine", "margin"),
        ("retrieval accuracy (mean of both directions)", "top-1 accuracy"),
    ]
    for row, (kind, key) in enumerate((("raw", "layers"), ("centered", "layers_centered"))):
        axes = grid[row]
        for ax, (title, ylabel) in zip(axes, panels):
            ax.set_title(f"{kind}: {title}", fontsize=12)
            ax.set_ylabel(ylabel, fontsize=11)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=10, labelbottom=True)
            if row == 1:
                ax.set_xlabel("layer (0 = embeddings)", fontsize=11)
        for i, (label, name, pair) in enumerate(curves):
            layers = pair[key]
            x = [r["layer"] for r in layers]
            marker = markers[model_names.index(label) % len(markers)]
            style = {"color": f"C{i % 10}", "marker": marker, "markersize": 4 if len(x) <= 48 else 0,
                     "linewidth": 1.8}
            legend = f"{label} · {name}" if row == 0 else None
            axes[0].plot(x, [r["pair_cosine"] for r in layers], label=legend, **style)
            axes[0].plot(x, [r["mismatch_cosine"] for r in layers], color=style["color"], linestyle=":", linewidth=1.4)
            axes[1].plot(x, [r["margin"] for r in layers], **style)
            axes[2].plot(x, [(r["retrieval_src_to_tgt"] + r["retrieval_tgt_to_src"]) / 2 for r in layers], **style)
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[2].set_ylim(-0.02, 1.02)
    sizes = sorted({p["sentences"] for m in report["models"] for p in m["pairs"].values()})
    data = report["data"]
    if "flores" in data:  # a named version ("flores101 devtest") or the tail of a local folder
        parts = Path(data["flores"]).parts
        where = "/".join(parts[-2:]) if len(parts) > 1 else f"{data['flores']} {data['split']}"
    else:
        where = f"{Path(data['src_file']).name} / {Path(data['tgt_file']).name}"
    fig.suptitle(
        f"Cross-lingual representation alignment by layer — {where}, "
        f"{'/'.join(map(str, sizes))} sentence pairs, mean-pooled hidden states",
        fontsize=14,
    )
    fig.legend(loc="outside lower center", ncol=min(4, len(curves)), fontsize=11, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="M",
                        help="Hub id, local checkpoint or .gguf file; repeat to compare models on one chart")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="legend name per --model (default: from the path)")
    parser.add_argument("--pairs", default=None, help="comma-separated SRC-TGT pairs (default en-zh)")
    parser.add_argument("--data", default=None,
                        help="FLORES: 'flores101', 'flores200' (Hub) or a local folder such as "
                             "../shared/data/eval/flores101/devtest (default flores101)")
    parser.add_argument("--split", default="devtest", help="FLORES split (default devtest)")
    parser.add_argument("--src-file", help="instead of FLORES: a plain-text file, one sentence per line")
    parser.add_argument("--tgt-file", help="its translations, line-aligned with --src-file")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sentence pairs")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default 16)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="truncate sentences to this many tokens (default 512)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--pool-tokens", default="text", choices=["text", "all"],
                        help="text (default): mean over text tokens, leaving out special tokens and the first "
                             "position (the attention sink); all: every non-padding token")
    parser.add_argument("--out", required=True, help="directory for alignment.json and alignment.png")


def _check_args(args) -> None:
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value is not None and value < 1:
            raise XllamaError(f"{flag} must be a positive integer, got {value}")
    if args.limit == 1:
        raise XllamaError("--limit must be at least 2: mismatched pairs need two sentences")


def run(args) -> int:
    _check_args(args)
    sets = load_parallel_sets(args)
    labels = model_labels(args.model, args.label)

    import torch

    from xllama import __version__
    from xllama.io import atomic_write_json, content_hash
    from xllama.modeling import load_model, load_tokenizer, model_max_length, resolve_model

    sources = [resolve_model(spec) for spec in args.model]  # a missing path fails before any loading
    init_distributed()  # `accelerate launch -m xllama align ...`: each process encodes a shard of the batches
    device = args.device or local_device() or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    models = []
    for source, label in zip(sources, labels):
        started = time.time()
        log.info("loading %s (%s on %s)", source, dtype, device)
        tokenizer = load_tokenizer(source)
        model = load_model(source, dtype=dtype, device=device)
        model.eval()
        limit = model_max_length(model)
        max_length = min(args.max_length, limit) if limit else args.max_length
        # Source sentences shared by several pairs (English in en-zh,en-de) are encoded once per model.
        uses: dict[str, int] = {}
        for key in (content_hash(side) for s in sets for side in (s.source, s.target)):
            uses[key] = uses.get(key, 0) + 1
        cache: dict[str, PooledSentences] = {}

        def encode(sentences, lang, where):
            key = content_hash(sentences)
            if key not in cache:
                cache[key] = encode_sentences(
                    model, tokenizer, sentences, batch_size=args.batch_size, max_length=max_length,
                    pool_tokens=args.pool_tokens, desc=f"{label} {lang}", where=where,
                )
            pooled = cache[key]
            uses[key] -= 1
            if uses[key] == 0:
                del cache[key]
            return pooled

        pairs = {}
        for s in sets:
            src_lang, tgt_lang = s.name.split("-")
            src = encode(s.source, src_lang, s.origin.get("src_file", f"{s.name} source"))
            tgt = encode(s.target, tgt_lang, s.origin.get("tgt_file", f"{s.name} target"))
            pairs[s.name] = {
                "sentences": len(s.source),
                "mean_tokens": {"source": round(src.mean_tokens, 2), "target": round(tgt.mean_tokens, 2)},
                "truncated": {"source": src.truncated, "target": tgt.truncated},
                "layers": alignment_metrics(src.vectors, tgt.vectors),
                "layers_centered": alignment_metrics(src.vectors, tgt.vectors, center=True),
            }
        first_pair = next(iter(pairs.values()))["layers"]
        models.append({
            "label": label,
            "model": str(source),
            "num_layers": len(first_pair) - 1,
            "hidden_size": getattr(model.config, "hidden_size", None),
            "dtype": dtype,
            "device": device,
            "seconds": round(time.time() - started, 1),
            "pairs": pairs,
        })
        del model, cache
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    first = sets[0].origin
    data = {k: v for k, v in first.items() if k in ("flores", "split", "src_file", "tgt_file")}
    data["pairs"] = {s.name: {"sentences": s.origin["sentences"], "hash": s.origin["hash"]} for s in sets}
    report = {
        "xllama_version": __version__,
        "metrics": {
            "pair_cosine": "mean cosine similarity of each sentence and its translation",
            "mismatch_cosine": "mean cosine similarity over all non-translation pairs (i != j)",
            "margin": "pair_cosine - mismatch_cosine",
            "retrieval_src_to_tgt": "fraction of source sentences whose nearest target (cosine) is their translation",
            "retrieval_tgt_to_src": "the same from the target side",
        },
        "settings": {
            "pairs": [s.name for s in sets],
            "limit": args.limit,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "pool_tokens": args.pool_tokens,
            "pooling": "mean over non-padding tokens"
                       + (", special tokens and the first position excluded" if args.pool_tokens == "text" else ""),
            "centered": "layers_centered: each language's mean vector over these sentences subtracted per layer",
            "layer_0": "embedding output; the last layer is after the final norm",
        },
        "data": data,
        "models": models,
    }
    if not is_main_process():
        return 0  # rank 0 writes and reports
    out = Path(args.out)
    atomic_write_json(out / "alignment.json", report)
    plot_alignment(report, out / "alignment.png")
    for m in models:
        for name, pair in m["pairs"].items():
            for kind in ("layers", "layers_centered"):
                layers = pair[kind]
                best = max(layers, key=lambda r: r["margin"])
                best_r = max(layers, key=lambda r: r["retrieval_src_to_tgt"] + r["retrieval_tgt_to_src"])
                print(
                    f"{m['label']} {name} {'raw' if kind == 'layers' else 'centered'}: margin peaks at layer "
                    f"{best['layer']} ({best['margin']:.3f}); retrieval at layer {best_r['layer']} "
                    f"({best_r['retrieval_src_to_tgt']:.2f} {name}, {best_r['retrieval_tgt_to_src']:.2f} back); "
                    f"n={pair['sentences']}"
                )
    print(f"wrote {out / 'alignment.json'} and {out / 'alignment.png'}")
    return 0
