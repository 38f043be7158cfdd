"""The ``fxtap`` command line: one subcommand per stage (nodes, extract, render, bench, demo)."""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

# NOTE: only the parser is imported here; torch and the stages load after parsing, so that
# --help and usage errors answer at once.
from fxtap.cli._parser import PROG, build_parser

__all__ = ["ModelSpecError", "build_parser", "main"]


def __getattr__(name: str) -> Any:
    # NOTE: loaded on first use, so that --help answers without importing torch.
    if name == "ModelSpecError":
        from fxtap.cli._models import ModelSpecError

        return ModelSpecError
    raise AttributeError(f"module 'fxtap.cli' has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0 on success, 1 on a runtime error, 2 on bad usage.

    Bad usage includes an output path that is a symbolic link, folder, FIFO or device node.

    >>> main(["nodes", "torchvision:resnet18"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from fxtap.cli._output import check_outputs, one_line, show_warning
        from fxtap.errors import UnsafeOutputError
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    try:
        with warnings.catch_warnings():
            # Filters stay as they are; only how a shown warning looks changes.
            warnings.showwarning = show_warning
            from fxtap.cli._commands import COMMANDS

            check_outputs(args)  # before any work: a refused path is bad usage
            return int(COMMANDS[args.handler](args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except UnsafeOutputError as exc:  # a link, folder, FIFO or device at an output path
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 1
