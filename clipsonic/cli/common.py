"""What every command shares: the parser class, common options, help formatting, and the checks and helpers several commands use."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path


log = logging.getLogger("clipsonic")


COMMON_DEFAULTS = {"device": "auto", "dtype": "fp32", "seed": None, "threads": None,
                   "verbose": 0, "quiet": False, "debug": False}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit 2. Each command's handler finds its
    own parser's `error` as ``args.usage_error`` for the checks argparse cannot make."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(usage_error=self.error)  # after the parents' defaults: the innermost parser wins

    def error(self, message: str):  # noqa: D401 - argparse's name
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None (the help text says what an absent value means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def help_formatter(prog: str) -> argparse.HelpFormatter:
    return _Formatter(prog, max_help_position=32)


def _seed(text: str) -> int:
    from clipsonic.pipeline import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to 2**63-1)")
    return value


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command name.

    Defaults are suppressed here and filled in after parsing, so a value given before the
    command is not overwritten by the subcommand's default.
    """
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("common options")
    group.add_argument("--device", metavar="DEV",
                       help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA when present)")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                       help="compute precision of the models (default: fp32; for sample: auto = bf16 on CPUs that "
                            "compute it natively, else fp32)")
    group.add_argument("--seed", type=_seed, help="random seed for a reproducible run, 0 to 2**63-1 (default: none)")
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    group.add_argument("-v", "--verbose", action="count", help="more log output (repeatable)")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def command_group(commands: argparse._SubParsersAction, name: str, summary: str, description: str,
                   metavar: str = "ACTION") -> argparse._SubParsersAction:
    """A command with sub-commands (`clipsonic NAME ACTION ...`): the sub-parsers to add its actions to."""
    group = commands.add_parser(name, help=summary, description=description, formatter_class=help_formatter)
    return group.add_subparsers(dest=f"{name}_{metavar.lower()}", metavar=metavar, required=True)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The models a generating command loads (none: the shipped demo bundle)."""
    parser.add_argument("--checkpoint", type=Path, help="UNet checkpoint from `clipsonic train`")
    parser.add_argument("--clip", type=Path, help="the CLIP checkpoint the UNet was trained with")
    parser.add_argument("--prior", type=Path, help="diffusion prior checkpoint (ours, or LAION's latest.pth)")
    parser.add_argument("--prior-config", type=Path, help="LAION's prior_config.json (default: beside --prior)")
    parser.add_argument("--vocoder", type=Path, help="BigVGAN checkpoint (ours, or NVIDIA's bigvgan_generator.pt); "
                                                     "default: Griffin-Lim")
    parser.add_argument("--vocoder-config", type=Path, help="NVIDIA's config.json (default: beside --vocoder)")
    parser.add_argument("--bundle", type=Path, help="a folder holding clip.pt, unet.pt (and prior.pt, vocoder.pt) "
                                                    "instead (default with no models: the shipped demo bundle)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], default="dpm++", help="sampler")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (the paper: ddpm with 1000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the audio")


def print_rows(rows, json_path: Path | None) -> None:
    from clipsonic import bench
    from clipsonic.fileio import write_json_atomic

    print(bench.markdown_table(rows))
    if json_path:
        write_json_atomic(json_path, [row.as_row() for row in rows])


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def parameter_count(model) -> str:
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count / 1e3:.1f} k"


def check_generation_settings(args: argparse.Namespace, process_steps: int | None = None,
                    guidance: Sequence[float] | None = None) -> None:
    """Generation settings as usage errors naming their flag (before any work, and again against
    the loaded model's diffusion length)."""
    from clipsonic.pipeline import PAPER_GUIDANCE, SettingError, check_settings

    try:
        for weight in guidance or [args.guidance]:
            # Not given: the bundle's recommended weight, checked when bundle.json is read.
            weight = PAPER_GUIDANCE if weight is None else weight
            check_settings(weight, args.sampler, args.steps, args.seconds, args.seed, args.batch, process_steps)
    except SettingError as error:
        flag = "--guidance-sweep" if guidance and error.parameter == "guidance" else f"--{error.parameter}"
        args.usage_error(f"{flag} {error.value}: {error.message}")


class LazyBar:
    """A tqdm bar that appears at the first step, so that messages and errors from what comes
    before (loading, the text encoder, the prior) are not printed under an empty bar."""

    def __init__(self, **settings) -> None:
        self.settings, self.bar = settings, None

    def update(self, steps: int = 1) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(dynamic_ncols=True, **self.settings)
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def generation_dtype(args: argparse.Namespace, device):
    """(torch dtype, the line to log) for a generating command: with ``auto``, the line says what
    was picked and why; with an explicit --dtype there is nothing to say."""
    from clipsonic import runtime

    if args.dtype != runtime.AUTO:
        return runtime.resolve_dtype(args.dtype), None
    name, why = runtime.auto_dtype(device)
    hint = "; --dtype fp32 for full precision" if name != "fp32" else ""
    return runtime.resolve_dtype(name), f"precision {name} ({why}{hint})"


def parse_floats(args: argparse.Namespace, text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        args.usage_error(f"{option} {text}: expected comma-separated numbers, e.g. 1,1.5,2,3")
    if not values:
        args.usage_error(f"{option}: no values given")
    return values


def named_folder(args: argparse.Namespace, text: str, option: str,
                  default_name: str | None = None) -> tuple[str, Path]:
    """NAME=FOLDER (or FOLDER alone when a default name exists) as (name, folder)."""
    name, separator, folder = text.partition("=")
    if not separator:
        name, folder = default_name, text
    name = (name or "").strip()
    if not name or not folder:
        args.usage_error(f"{option} {text}: expected NAME=FOLDER")
    return name, Path(folder).expanduser()
