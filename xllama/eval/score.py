"""Score existing translations without a model: ``xllama eval score --hyp out.zh --ref ref.zh --tgt zh``.

Prints one JSON object (``bleu``, ``chrf``, ..., ``n``, ``signature``) and optionally writes it to --out.
Files are plain text, one segment per line; an empty line is an empty hypothesis (it scores zero and
counts as off-target).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xllama.errors import XllamaError
from xllama.eval import metrics as M
from xllama.io import atomic_write_json
from xllama.languages import get_language


def read_segments(path: str | Path, what: str) -> list[str]:
    """One segment per line (a trailing newline does not add an empty segment); empty files are errors."""
    path = Path(path)
    if not path.is_file():
        raise XllamaError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XllamaError(f"{what} file {path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise XllamaError(f"{what} file {path} is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hyp", required=True, help="system outputs, one segment per line")
    parser.add_argument("--ref", required=True, help="references, aligned line by line with --hyp")
    parser.add_argument("--tgt", required=True, help="target language code (picks BLEU's tokenizer), e.g. zh")
    parser.add_argument("--src", help="source segments (needed by COMET)")
    parser.add_argument("--metrics", default="bleu,chrf",
                        help=f"comma-separated, from: {', '.join(M.METRICS)} (default: bleu,chrf)")
    parser.add_argument("--bleu-tokenize", metavar="TOK",
                        help=f"override BLEU's tokenizer, one of {', '.join(M.BLEU_TOKENIZERS)} "
                        "(default: the target language's: 13a, zh for Chinese, char for ja/ko/th)")
    parser.add_argument("--spbleu-tokenize", default=M.DEFAULT_SPBLEU_TOKENIZE,
                        help=f"spBLEU's SentencePiece model, {' or '.join(M.SPBLEU_TOKENIZERS)} (default: %(default)s)")
    parser.add_argument("--spm-model", help=f"local copy of the flores SentencePiece model (or ${M.SPM_MODEL_ENV})")
    parser.add_argument("--comet-model", default=M.DEFAULT_COMET_MODEL,
                        help="COMET Hub id or local checkpoint folder/.ckpt (default: %(default)s)")
    parser.add_argument("--cometkiwi-model", default=M.COMET_METRICS["cometkiwi"],
                        help="for the reference-free cometkiwi (default: %(default)s)")
    parser.add_argument("--xcomet-model", default=M.COMET_METRICS["xcomet"], help="for xcomet (default: %(default)s)")
    parser.add_argument("--comet-batch-size", type=int, default=16)
    parser.add_argument("--bleurt-model", default=M.DEFAULT_BLEURT_MODEL,
                        help="BLEURT PyTorch-port checkpoint (default: %(default)s; needs bleurt-pytorch)")
    parser.add_argument("--gpus", type=int, help="GPUs for COMET/BLEURT (default: 1 if CUDA is available)")
    parser.add_argument("--out", help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    # Cheap checks first, so a typo fails before any model is loaded.
    target = get_language(args.tgt).code
    metrics = M.parse_metrics(args.metrics)
    if args.bleu_tokenize is not None and args.bleu_tokenize not in M.BLEU_TOKENIZERS:
        raise XllamaError(f"unknown BLEU tokenizer {args.bleu_tokenize!r}; known: {', '.join(M.BLEU_TOKENIZERS)}")
    if args.spbleu_tokenize not in M.SPBLEU_TOKENIZERS:
        raise XllamaError(f"unknown spBLEU tokenizer {args.spbleu_tokenize!r}; known: "
                          f"{', '.join(M.SPBLEU_TOKENIZERS)}")
    hyps = read_segments(args.hyp, "hypothesis")
    refs = read_segments(args.ref, "reference")
    if len(hyps) != len(refs):
        raise XllamaError(f"hypothesis file {args.hyp} has {len(hyps)} lines but reference file {args.ref} "
                          f"has {len(refs)}")
    srcs = None
    if args.src:
        srcs = read_segments(args.src, "source")
        if len(srcs) != len(hyps):
            raise XllamaError(f"source file {args.src} has {len(srcs)} lines but hypothesis file {args.hyp} "
                              f"has {len(hyps)}")
    result = M.score_translation(
        hyps, refs, target, srcs=srcs, metrics=metrics, bleu_tokenize=args.bleu_tokenize,
        spbleu_tokenize=args.spbleu_tokenize, spm_model=args.spm_model, comet_model=args.comet_model,
        comet_batch_size=args.comet_batch_size, bleurt_model=args.bleurt_model, gpus=args.gpus,
        cometkiwi_model=args.cometkiwi_model, xcomet_model=args.xcomet_model,
    )
    result = {"hyp": str(args.hyp), "ref": str(args.ref), "tgt": target, **result}
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0
