"""The training loop's settings (`TrainConfig`), apart from the loop so that reading them needs no torch.

The command line builds the trainers' shared options from these fields (`clipsonic.cli.train`).
"""

from __future__ import annotations

import dataclasses

from clipsonic.config import Config


def _option(default, help: str, flag: str | None = None, at_least: int | None = None):
    """A TrainConfig field that the trainers' command lines offer (as `flag`, default --field-name)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "at_least": at_least})


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """The loop's settings. Fields made with `_option` are the trainers' shared command-line options."""

    steps: int = _option(500_000, "total optimisation steps", at_least=1)
    batch_size: int = _option(32, "global batch size (split over processes)", at_least=1)
    lr: float = _option(1e-4, "AdamW learning rate")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    ema_decay: float = _option(0.9999, "EMA decay of the weights that sampling uses (0: none)", flag="--ema")
    grad_clip: float = _option(1.0, "gradient norm limit (0: none)")
    bf16: bool = _option(False, "autocast the forward pass to bfloat16")
    save_every: int = _option(5000, "checkpoint interval in steps", at_least=1)
    keep: int = _option(2, "numbered checkpoints kept besides the latest")  # snapshots, besides checkpoint.pt
    log_every: int = _option(100, "log.jsonl interval in steps", at_least=1)
    seed: int = 0  # the command line's common --seed
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    lr_decay: float = 1.0  # the learning rate at step s is lr * lr_decay ** s
    validate_every: int = 1000  # for tasks that can validate
