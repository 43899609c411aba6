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
from glmjax.storage import check_io, set_command_line

COMMAND_MODULES = (
    "glmjax.commands.data",
    "glmjax.commands.models",
    "glmjax.commands.score",
    "glmjax.commands.scores",
    "glmjax.commands.train",
    "glmjax.commands.audit",
    "glmjax.commands.demo",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention too)
        self.print_usage(sys.stderr)
        self.exit(2, f"glmjax: error: {message}\n")


# help of options whose command gives none (the same meaning wherever they occur)
DEFAULT_HELP = {
    "out": "file or folder to write",
    "seed": "random seed, an integer >= 0 (the same seed writes the same output)",
    "canaries": "canary manifest (JSON) from glmjax data canaries",
    "mode": "standalone: every copy is an extra record; splice: a copy replaces a segment of a window",
    "member_fraction": "fraction of the rows (or, with --by group, of the groups) that become members, in (0, 1)",
    "num_processes": "processes of a multi-process run (each gets its shard; use with --process-id)",
    "process_id": "this process's index in a multi-process run, 0-based",
    "overwrite": "replace an existing output that glmjax wrote (anything else is refused)",
    "batch_tokens": "tokens per device and forward pass",
    "dtype": "compute dtype: auto (bf16 on accelerators, fp32 on CPU), fp32 or bf16",
    "iters": "timed iterations",
    "trust_pickle": "allow pickle-format weights (a pickle is a program: only for files of trusted origin)",
    "epochs": "passes over the training rows",
    "batch_size": "sequences per optimizer step",
    "lr": "peak learning rate (AdamW: linear warmup, then cosine decay)",
    "warmup_steps": "steps of linear learning-rate warmup",
    "weight_decay": "AdamW weight decay",
    "clip_norm": "global gradient-norm clipping threshold",
    "num_models": "shadow models to train (each on a seeded random half of the rows)",
    "beam_width": "beams of the beam-search extraction (causal families)",
}


def _document(parser: argparse.ArgumentParser) -> None:
    """Give every option a help text and show its default (``--help`` of every command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _document(sub)
            continue
        if not action.option_strings or action.dest in ("help", "version") or action.help == argparse.SUPPRESS:
            continue
        if action.help is None:
            action.help = DEFAULT_HELP.get(action.dest, "")
        shown = action.default not in (None, False, argparse.SUPPRESS) and "default" not in (action.help or "")
        if shown and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            action.help = f"{action.help} (default: %(default)s)".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="glmjax", description="Audit genomic language models for memorization and "
                     "privacy leakage (perplexity detection, canary extraction/exposure, membership "
                     "inference, worst-case risk).")
    parser.add_argument("--version", action="version", version=f"glmjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for modname in COMMAND_MODULES:  # a missing command module is an installation error: fail loudly
        importlib.import_module(modname).register(sub)
    _document(parser)
    return parser


def check_command_io(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output of the command that is, contains or lies inside one
    of its inputs. Each command declares them with ``set_defaults(io=(inputs, outputs))``: the
    ``dest`` of each option, ``"dest:LABEL"`` for a positional argument."""
    def named(items):
        out = {}
        for item in items:
            dest, _, label = item.partition(":")
            out[label or "--" + dest.replace("_", "-")] = getattr(args, dest, None)
        return out

    ins, outs = getattr(args, "io", ((), ()))
    check_io(named(ins), named(outs))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glmjax`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad option (one line, status 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if argv is not None:  # provenance records this call, not the command line of the host process
        set_command_line(["glmjax", *argv])
    try:
        check_command_io(args)
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
    except OSError as e:  # a full disk, a read-only folder, a file where a folder is expected...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"glmjax: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # an accelerator out of memory is the user's batch size, not a crash
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print("glmjax: error: the device ran out of memory; lower --batch-tokens (or score with fewer "
              "per-token outputs)", file=sys.stderr)
        return 2
    finally:
        set_command_line(None)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
