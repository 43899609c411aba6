"""The ``glmjax`` command line. Thin: parses options, calls the library, prints summaries.

Each command group lives in ``glmjax/commands/<group>.py`` and exposes ``register(subparsers)``.
User mistakes raise :class:`glmjax.errors.GlmjaxError`; they are printed on one line without a
traceback and the exit status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from glmjax import __version__
from glmjax.errors import GlmjaxError
from glmjax.storage import set_command_line

COMMAND_MODULES = (
    "glmjax.commands.data",
    "glmjax.commands.models",
    "glmjax.commands.score",
    "glmjax.commands.train",
    "glmjax.commands.audit",
    "glmjax.commands.demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention too)
        self.print_usage(sys.stderr)
        self.exit(2, f"glmjax: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="glmjax", description="Audit genomic language models for memorization and "
                     "privacy leakage (perplexity detection, canary extraction/exposure, membership "
                     "inference, worst-case risk).")
    parser.add_argument("--version", action="version", version=f"glmjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glmjax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is not None:  # provenance records this call, not the command line of the host process
        set_command_line(["glmjax", *argv])
    try:
        rc = args.func(args)
    except GlmjaxError as e:
        print(f"glmjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glmjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        set_command_line(None)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
