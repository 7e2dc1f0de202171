"""The `clipsonic` command: a thin argparse shell over the library.

Heavy imports happen inside each command. A user error prints one line on stderr and exits
with 2 (usage) or 1 (failure); a traceback appears only with --debug. Library code never
imports this module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clipsonic import __version__
from clipsonic.errors import ClipsonicError

log = logging.getLogger("clipsonic")

COMMON_DEFAULTS = {"device": "auto", "dtype": "fp32", "seed": None, "threads": None,
                   "verbose": 0, "quiet": False, "debug": False}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line."""

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (the help text says what an absent value means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return _Formatter(prog, max_help_position=32)


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    Defaults are suppressed here and filled in after parsing, so a value given before the
    command is not overwritten by the subcommand's default.
    """
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("common options")
    group.add_argument("--device", metavar="DEV",
                       help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA when present)")
    group.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                       help="compute precision of the models (default: fp32)")
    group.add_argument("--seed", type=int, help="random seed for a reproducible run (default: none)")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    group.add_argument("-v", "--verbose", action="count", help="more log output (repeatable)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def _add_weights(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    weights = commands.add_parser("weights", help="list and verify model weight files",
                                  description="List and verify the weight files named in the manifest.",
                                  formatter_class=_formatter)
    actions = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    folder_help = ("folder holding downloaded official files; repeatable "
                   "(default: $CLIPSONIC_WEIGHTS or ~/.cache/clipsonic/weights)")

    listing = actions.add_parser("list", parents=[common], formatter_class=_formatter,
                                 help="show every known weight file, where it comes from and whether it is here",
                                 description="Show every weight file in the manifest: kind, whether a copy "
                                             "is present, its source and licence. Does not hash files.")
    listing.add_argument("--dir", type=Path, action="append", help=folder_help)
    listing.set_defaults(handler=_weights_list)

    check = actions.add_parser("verify", parents=[common], formatter_class=_formatter,
                               help="check the sha256 of the weight files that are present",
                               description="Hash every present weight file (or those named) against the "
                                           "manifest. Exit 1 on a mismatch or when a named file is missing.")
    check.add_argument("names", nargs="*", metavar="NAME", help="entries to verify (default: all present)")
    check.add_argument("--dir", type=Path, action="append", help=folder_help)
    check.set_defaults(handler=_weights_verify)

    importer = actions.add_parser("import-clip", parents=[common], formatter_class=_formatter,
                                  help="convert a CLIP checkpoint (OpenAI .pt, state dict, Hugging Face) to ours",
                                  description="Read a CLIP checkpoint in any supported layout (OpenAI TorchScript "
                                              "archive, OpenAI state dict, Hugging Face folder or file, ours), "
                                              "write it as a clipsonic checkpoint and verify the copy.")
    importer.add_argument("path", type=Path, help="checkpoint file or Hugging Face model folder")
    importer.add_argument("-o", "--output", type=Path,
                          help="where to write (default: clip-<name>.pt in the user weights folder)")
    importer.set_defaults(handler=_weights_import_clip)


def _add_bench(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = commands.add_parser("bench", help="time our fast paths against their references",
                                description="Time our fast paths against a reference measured in the same run; "
                                            "prints a Markdown table (ratio > 1 means ours is faster).",
                                formatter_class=_formatter)
    targets = bench.add_subparsers(dest="bench_target", metavar="TARGET", required=True)
    clip = targets.add_parser("clip", parents=[common], formatter_class=_formatter,
                              help="CLIP image encoding: eager fp32 against bf16/fp16",
                              description="Time CLIP image encoding in float32 (the eager reference) and in "
                                          "lower precision, with the cosine similarity of the outputs.")
    clip.add_argument("--preset", default="paper", help="CLIP size when no checkpoint is given "
                                                        "(paper = ViT-L/14, vit-b-32, tiny, ...); weights are random")
    clip.add_argument("--checkpoint", type=Path, help="time this CLIP checkpoint instead of random weights")
    clip.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes")
    clip.add_argument("--compare", nargs="+", default=["bf16"], choices=["bf16", "fp16"],
                      help="precisions to compare with the fp32 reference")
    clip.add_argument("--repeat", type=int, default=3, help="timed runs per case (the median is reported)")
    clip.add_argument("--json", type=Path, help="also write the rows as JSON here")
    clip.set_defaults(handler=_bench_clip)


def build_parser() -> Parser:
    common = _common_options()
    parser = Parser(prog="clipsonic", parents=[common], formatter_class=_formatter,
                    description="CLIPSonic: text-to-audio synthesis learned from unlabeled videos through CLIP.")
    parser.add_argument("--version", action="version", version=f"clipsonic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    _add_weights(commands, common)
    _add_bench(commands, common)
    return parser


def _folders(args: argparse.Namespace) -> list[Path] | None:
    return [folder.expanduser() for folder in args.dir] if args.dir else None


def _weights_list(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    folders = _folders(args)
    entries = manifest.load_manifest()
    width = max(len(name) for name in entries)
    for entry in entries.values():
        path = manifest.locate(entry, folders)
        state = "shipped" if entry.shipped and path else "present" if path else "missing"
        print(f"{entry.name:<{width}}  {entry.kind:<12}  {state:<8}  {path or entry.file}")
        print(f"{'':<{width}}  source:  {entry.source}")
        print(f"{'':<{width}}  licence: {entry.licence}")
    where = ", ".join(str(f) for f in folders or [manifest.user_folder()])
    print(f"\nofficial files are looked for in: {where}")
    return 0


def _weights_verify(args: argparse.Namespace) -> int:
    from clipsonic import manifest

    entries = manifest.load_manifest()
    unknown = [name for name in args.names if name not in entries]
    if unknown:
        raise ClipsonicError(f"unknown weight name(s) {', '.join(unknown)} (see 'clipsonic weights list')")
    chosen = [entries[name] for name in args.names] if args.names else list(entries.values())
    results = [manifest.verify(entry, _folders(args)) for entry in chosen]
    width = max(len(result.entry.name) for result in results)
    for result in results:
        print(f"{result.entry.name:<{width}}  {result.status:<8}  {result.detail}")
    failures = [r for r in results if r.failed or (args.names and r.status == "missing")]
    if failures:
        raise ClipsonicError(f"{len(failures)} weight file(s) failed verification: "
                             + ", ".join(r.entry.name for r in failures))
    return 0


def _weights_import_clip(args: argparse.Namespace) -> int:
    from clipsonic import clip, manifest

    source = args.path
    state, _, layout = clip.read_clip_weights(source)
    model = clip.load_clip(source)
    output = args.output or manifest.user_folder() / f"clip-{source.resolve().name.split('.')[0]}.pt"
    clip.save_clip(output, model)
    copy = clip.load_clip(output)
    for name, tensor in model.state_dict().items():
        if not torch_equal(copy.state_dict()[name], tensor):
            raise ClipsonicError(f"{output}: verification failed: {name} differs from {source}")
    config = model.config
    print(f"read      {source} ({layout} layout, {len(state)} tensors)")
    print(f"model     ViT {config.image_resolution}px/{config.vision_patch_size}, vision {config.vision_width}x"
          f"{config.vision_layers}, text {config.text_width}x{config.text_layers}, embed {config.embed_dim}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    if source.is_file():
        digest = manifest.sha256_file(source)
        known = [e.name for e in manifest.load_manifest().values() if e.sha256 == digest]
        print(f"sha256    {digest}" + (f" (the official {known[0]})" if known else ""))
    print(f"wrote     {output} (float32; reloads identically)")
    return 0


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _bench_clip(args: argparse.Namespace) -> int:
    import json

    from clipsonic import bench, clip

    if args.checkpoint is not None:
        model = clip.load_clip(args.checkpoint)
    else:
        model = clip.CLIP(clip.CLIPConfig.preset(args.preset)).eval()
    if any(batch < 1 for batch in args.batch) or args.repeat < 1:
        raise ClipsonicError("--batch and --repeat must be at least 1")
    log.info("timing CLIP (%s) on %d thread(s)", args.checkpoint or args.preset, _torch_threads())
    rows = bench.bench_clip(model, args.batch, ["fp32", *args.compare], repeat=args.repeat)
    print(bench.markdown_table(rows))
    if args.json:
        from clipsonic.fileio import write_json_atomic

        write_json_atomic(args.json, [row.as_row() for row in rows])
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _apply_runtime(args: argparse.Namespace) -> None:
    from clipsonic import runtime

    if not runtime.DEVICE_PATTERN.match(args.device):
        raise ClipsonicError(f"--device {args.device}: expected auto, cpu, cuda, cuda:N or mps")
    if args.threads is not None:
        runtime.set_threads(args.threads)
    if args.seed is not None:
        runtime.seed_everything(args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
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
        print(f"clipsonic: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # an unexpected failure still gets one line unless --debug
        if args.debug:
            raise
        print(f"clipsonic: error: {type(error).__name__}: {error} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
