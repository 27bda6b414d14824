"""The ``xllama`` command: one sub-command per pipeline stage, each defined in its own module.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy libraries (torch,
transformers) inside ``run`` so that ``xllama --help`` stays fast. Every XllamaError becomes a one-line
message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xllama import __version__
from xllama.errors import XllamaError

# (command, module, one-line help). The order is the pipeline's.
COMMANDS = [
    ("data", "xllama.data.cli", "build and inspect CoIT/MuIT training mixes"),
    ("train", "xllama.train.cli", "instruction-tune a causal LM (x-LLaMA, m-LLaMA, ALMA) from a recipe"),
    ("eval", "xllama.eval.cli", "evaluate translation (FLORES/WMT) and QA (XQuAD/MLQA); score and report"),
    ("translate", "xllama.translate", "translate text or files with a tuned model"),
    ("scaling", "xllama.scaling.cli", "fit data-size scaling laws and allocate a parallel-data budget"),
    ("align", "xllama.align", "measure cross-lingual representation alignment across layers"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xllama",
        description="Extend an English-centric LLM to other languages (x-LLaMA, m-LLaMA, ALMA).",
    )
    parser.add_argument("--version", action="version", version=f"xllama {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # stage not installed in this build
                continue
            raise
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except XllamaError as e:
        print(f"{getattr(args, '_prog', None) or 'xllama ' + args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xllama {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
