"""The `clipsonic` command: a thin argparse shell over the library, one module per command group.

Each module `register`s its commands' parsers and holds their handlers: parse, call one library
function, print. Heavy imports happen inside each handler. A user error prints one line on stderr
and exits with 2 (usage) or 1 (failure); a traceback appears only with --debug. Library code never
imports this package; `common` holds what several commands share.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from clipsonic import __version__
from clipsonic.cli import (bench, bundle, demo, evaluate, listen, preprocess, sample, train,
                           weights)
from clipsonic.cli.common import COMMON_DEFAULTS, Parser, common_options, help_formatter, log
from clipsonic.errors import ClipsonicError, Interrupted, ParameterError


def build_parser() -> Parser:
    common = common_options()
    parser = Parser(prog="clipsonic", parents=[common], formatter_class=help_formatter,
                    description="CLIPSonic: text-to-audio synthesis learned from unlabeled videos through CLIP.")
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in (demo, preprocess, train, sample, evaluate, listen, bundle, weights, bench):
        group.register(commands, common)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) != 0:
        level = logging.WARNING  # under torchrun only rank 0 reports progress
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _apply_runtime(args: argparse.Namespace) -> None:
    from clipsonic import runtime

    if not runtime.DEVICE_PATTERN.match(args.device):
        args.usage_error(f"--device {args.device}: expected auto, cpu, cuda, cuda:N or mps")
    if args.threads is not None:
        if args.threads < 1:
            args.usage_error(f"--threads {args.threads}: must be at least 1")
        runtime.set_threads(args.threads)
    if args.seed is not None:
        runtime.seed_everything(args.seed)


def run() -> None:
    """The console script and `python -m clipsonic`: `main`, then exit.

    After a command marked `quick_exit` (sample: its whole budget is a few seconds) returns,
    the process ends with os._exit once output is flushed: interpreter shutdown with torch
    loaded takes about 0.5 s on a 2-core CPU (tearing down torch's modules), and there is nothing
    left to do by then: files are written atomically and closed, and no child process is alive.
    """
    args_seen: dict = {}
    code = main(parsed=args_seen)
    if args_seen.get("quick_exit"):
        import multiprocessing

        if not multiprocessing.active_children():
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None, parsed: dict | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    position = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if position is not None and argv[position:position + 2] == ["eval", "fad"]:
        argv[position:position + 2] = ["eval-fad"]
    args = parser.parse_args(argv)
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, getattr(args, f"default_{name}", value))
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if parsed is not None:
        parsed.update(vars(args))
    _configure_logging(args)
    try:
        _apply_runtime(args)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("clipsonic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, and keep Python's exit-time
        # flush of stdout from failing a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ClipsonicError as error:
        if args.debug:
            raise
        message = error.for_cli() if isinstance(error, ParameterError) else str(error)
        print(f"clipsonic: error: {message}", file=sys.stderr)
        return 130 if isinstance(error, Interrupted) else 1
    except Exception as error:  # an unexpected failure still gets one line unless --debug
        if args.debug:
            raise
        print(f"clipsonic: error: {type(error).__name__}: {error} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
