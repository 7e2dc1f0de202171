"""The training loop shared by `train` (UNet) and `train-prior`: AdamW, EMA, clipping, checkpoints, DDP.

Exact resumption: every source of randomness in step s (batch choice, crops, timesteps,
noise, dropout) is seeded from (seed, s, rank), so a run resumed from a checkpoint at step s
continues exactly as the uninterrupted run would have. Checkpoints hold the EMA weights as
``state_dict`` (what sampling uses) and, in ``extra``, the raw weights, optimizer state, step,
RNG state and configs; they are written atomically, on rank 0 only.

Distributed: launched by ``torchrun``, each rank takes ``batch_size / world_size`` samples
per step from its own share of every epoch's permutation; gradients are averaged by
DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipsonic.checkpoint import load_checkpoint, save_checkpoint
from clipsonic.errors import ClipsonicError, Interrupted
from clipsonic.train.settings import TrainConfig

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(ClipsonicError):
    """Training cannot go on (a NaN loss, an incompatible checkpoint)."""


@dataclasses.dataclass
class ResumeState:
    """What a training checkpoint holds only to resume (beside the EMA weights, config and the task's
    metadata); a checkpoint for sampling needs none of it. Written and read only through this class."""

    model: dict[str, Any]  # the raw (not averaged) weights
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    adversary: dict[str, Any] | None = None  # a GAN's discriminator and its optimizer
    adversary_optimizer: dict[str, Any] | None = None

    def to_extra(self) -> dict[str, Any]:
        """The checkpoint "extra" entries (tensors shared, not copied; absent parts left out)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if getattr(self, field.name) is not None}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "ResumeState":
        return cls(**{name: extra.get(name) for name in RESUME_STATE})


RESUME_STATE = tuple(field.name for field in dataclasses.fields(ResumeState))


def export_for_sampling(source: str | os.PathLike, target: str | os.PathLike, kind: str) -> Path:
    """Copy a training checkpoint without its resume state (raw weights, optimizer, RNG): the
    EMA weights, configs and the task's metadata, a third of the size or less."""
    payload = load_checkpoint(source, kind)
    extra = {key: value for key, value in payload["extra"].items() if key not in RESUME_STATE}
    return save_checkpoint(target, kind, payload["config"], payload["state_dict"], version=payload["version"],
                           extra=extra)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What a run's latest checkpoint says it was: the model config and the task's training settings."""

    path: Path
    config: dict[str, Any]
    training: dict[str, Any] | None
    extra: dict[str, Any]


def saved_run(out_dir: str | os.PathLike, kind: str) -> SavedRun | None:
    """The settings of the run in `out_dir` (None when it has no checkpoint yet): what a resumed
    run must be built with, whatever the caller's defaults are."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    payload = load_checkpoint(path, kind)
    return SavedRun(path, payload["config"], payload["extra"].get("training"), payload["extra"])


def first_difference(before: Any, now: Any, where: str = "") -> str | None:
    """The first field where two config dicts differ, as "name=before, not now"; None when equal."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now)):
            found = first_difference(before.get(key), now.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(before, (list, tuple)) and isinstance(now, (list, tuple)) and list(before) == list(now):
        return None
    return None if before == now else f"{where or 'its settings'}={before!r}, not {now!r}"


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a task needs to draw one rank's batch for one step, reproducibly."""

    step: int
    rank: int
    world: int
    batch_size: int  # this rank's share
    seed: int
    generator: torch.Generator  # seeded from (seed, step, rank); use it for every random draw
    device: torch.device


@dataclasses.dataclass
class StepLoss:
    """What a task's loss for one step is: the value to minimise, numbers to log with it, and for a
    GAN what the adversary judges next (the real and the generated batch)."""

    loss: torch.Tensor
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    adversary_batch: Any = None


class Task:
    """What a trainer trains: the model, how one rank's loss is drawn, what its checkpoint records.

    A GAN sets `adversary` (its discriminator) and implements `adversary_loss`, stepped by its own
    optimizer right after the model's step; a task that can validate returns metrics from
    `validate`, logged every ``validate_every`` steps.
    """

    kind: str  # checkpoint kind, e.g. "unet"
    version: int
    model: nn.Module
    adversary: nn.Module | None = None

    def loss(self, model: nn.Module, context: StepContext) -> torch.Tensor | StepLoss:
        raise NotImplementedError

    def adversary_loss(self, adversary: nn.Module, context: StepContext, batch: Any) -> StepLoss:
        """The adversary's loss on `batch`, the `adversary_batch` of this step's `loss`."""
        raise NotImplementedError(f"{type(self).__name__} has no adversary")

    def validate(self, model: nn.Module) -> dict[str, float] | None:
        return None

    def checkpoint_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        raise NotImplementedError

    def saved_training(self, training: dict[str, Any] | None) -> dict[str, Any] | None:
        """A checkpoint's training settings as this version of the task writes them (an older file
        may name a setting differently or lack one that has a default), for resuming."""
        return training


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world=world, device=device)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed for each (run seed, step, rank)."""
    mixed = (seed * 1_000_003 + step) * 8191 + rank
    return (mixed * 0x9E3779B97F4A7C15) % (2**63 - 1)


def epoch_indices(count: int, batch: int, step: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of the `batch` items rank `rank` trains on at `step`.

    Every epoch is a fresh permutation of `count` items (seeded by epoch), padded by wrapping
    to a multiple of `world` and dealt round-robin, so ranks never share an item within an
    epoch; a rank reads its share as one endless stream. A pure function of its arguments.
    """
    per_rank = math.ceil(count / world)
    position = step * batch
    out: list[int] = []
    while len(out) < batch:
        epoch, offset = divmod(position, per_rank)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 0)))
        padded = torch.cat([order, order[: per_rank * world - count]]) if per_rank * world > count else order
        share = padded[rank::world]
        take = min(batch - len(out), per_rank - offset)
        out.extend(share[offset:offset + take].tolist())
        position += take
    return out


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current.detach().to(average.dtype), 1 - self.decay)
            else:
                average.copy_(current)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _grad_norm_and_clip(parameters: list[nn.Parameter], limit: float) -> float:
    if limit > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, limit))
    return float(torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))


class _StopRequest:
    """Remembers SIGINT/SIGTERM until the current step has finished."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner's worker)
                pass
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.signal = number

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def train(task: Task, config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          device: torch.device | str = "cpu", progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train `task.model` for `config.steps` steps; returns the final checkpoint's path.

    With `resume`, continues from ``out_dir/checkpoint.pt`` (same config required).
    """
    out = Path(out_dir)
    dist = setup_distributed(torch.device(device))
    if config.batch_size % dist.world:
        raise TrainingError(f"batch size {config.batch_size} does not split over {dist.world} processes")
    per_rank = config.batch_size // dist.world
    model = task.model.to(dist.device).train()
    ema = EMA(model, config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    adversary = task.adversary
    adversary_optimizer = None
    if adversary is not None:
        adversary = adversary.to(dist.device).train()
        adversary_optimizer = torch.optim.AdamW(adversary.parameters(), lr=config.lr, betas=config.betas,
                                                weight_decay=config.weight_decay)
    step = 0
    latest = out / CHECKPOINT_NAME
    if resume:
        if not latest.is_file():
            raise TrainingError(f"{latest}: nothing to resume from")
        saved = load_checkpoint(latest, task.kind, max_version=task.version)
        extra = saved["extra"]
        # Training settings first: they can decide the model's shape (the condition, its width).
        for what, before, now in (("training", task.saved_training(extra.get("training")),
                                   task.checkpoint_extra().get("training")),
                                  ("model", saved["config"], task.checkpoint_config())):
            difference = first_difference(before, now)
            if difference:
                raise TrainingError(f"{latest}: its {what} settings were {difference}; resume with the checkpoint's "
                                    f"settings (saved_run reads them) or start a new run")
        if extra["train_config"] != {**config.to_dict(), "steps": extra["train_config"]["steps"]}:
            raise TrainingError(f"{latest}: was trained with other loop settings; resume with the same ones "
                                f"(only the number of steps may change)")
        state = ResumeState.from_extra(extra)
        model.load_state_dict(state.model)
        ema.model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(state.optimizer)
        if adversary is not None:
            adversary.load_state_dict(state.adversary)
            adversary_optimizer.load_state_dict(state.adversary_optimizer)
        step = int(extra["step"])
        torch.set_rng_state(state.rng["torch"])
        if dist.main:
            log.info("resuming %s at step %d", latest, step)
    elif latest.is_file():
        raise TrainingError(f"{latest} exists: resume it (resume=True) or choose another output folder")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    wrapped = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        devices = [dist.device] if dist.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=devices)
        wrapped_adversary = DistributedDataParallel(adversary, device_ids=devices) if adversary is not None else None
    else:
        wrapped_adversary = adversary
    parameters = [p for p in model.parameters() if p.requires_grad]

    def save(at_step: int) -> Path:
        state = ResumeState(model.state_dict(), optimizer.state_dict(), _rng_state(),
                            None if adversary is None else adversary.state_dict(),
                            None if adversary is None else adversary_optimizer.state_dict())
        extra = {**task.checkpoint_extra(), **state.to_extra(), "step": at_step, "train_config": config.to_dict()}
        path = save_checkpoint(latest, task.kind, task.checkpoint_config(), ema.model.state_dict(),
                               version=task.version, extra=extra)
        if config.keep > 0:
            numbered = out / f"checkpoint-{at_step:08d}.pt"
            numbered.unlink(missing_ok=True)
            os.link(path, numbered)
            for old in sorted(out.glob("checkpoint-*.pt"))[:-config.keep]:
                old.unlink()
        return path

    bar = None
    if progress and dist.main:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True, desc=task.kind)
    smoothed, started, last_saved = None, time.perf_counter(), step
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=config.bf16)
    with _StopRequest() as stop:
        while step < config.steps:
            generator = torch.Generator().manual_seed(step_seed(config.seed, step, dist.rank))
            torch.manual_seed(step_seed(config.seed, step, dist.rank) ^ 0x5DEECE66D)
            context = StepContext(step, dist.rank, dist.world, per_rank, config.seed, generator, dist.device)
            for group in [*optimizer.param_groups, *(adversary_optimizer.param_groups if adversary else [])]:
                group["lr"] = config.lr * config.lr_decay**step
            with autocast:
                result = task.loss(wrapped, context)
            result = result if isinstance(result, StepLoss) else StepLoss(result)
            loss, metrics = result.loss, dict(result.metrics)
            if not torch.isfinite(loss.detach()).all():
                where = f"{latest} (step {last_saved})" if latest.is_file() else "none was written yet"
                raise TrainingError(f"loss became {loss.item()} at step {step}; training stopped. "
                                    f"The last good checkpoint is kept: {where}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _grad_norm_and_clip(parameters, config.grad_clip)
            optimizer.step()
            ema.update(model)
            if adversary is not None:
                with autocast:
                    judged = task.adversary_loss(wrapped_adversary, context, result.adversary_batch)
                adversary_loss = judged.loss
                metrics.update(judged.metrics)
                if not torch.isfinite(adversary_loss.detach()).all():
                    raise TrainingError(f"the adversary's loss became {adversary_loss.item()} at step {step}; "
                                        f"training stopped. The last good checkpoint is kept: {latest}")
                adversary_optimizer.zero_grad(set_to_none=True)
                adversary_loss.backward()
                _grad_norm_and_clip([p for p in adversary.parameters() if p.requires_grad], config.grad_clip)
                adversary_optimizer.step()
            step += 1
            value = float(loss.detach())
            smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
            if on_step:
                on_step(step, value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
            if dist.main and (step % config.log_every == 0 or step == config.steps):
                rate = (step - last_saved) / max(time.perf_counter() - started, 1e-9)
                record = {"step": step, "loss": value, "loss_smoothed": smoothed, "grad_norm": grad_norm,
                          "steps_per_s": rate, **metrics}
                with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            validation = task.validate(ema.model) if dist.main and (
                step % config.validate_every == 0 or step == config.steps) else None
            if validation:
                if bar is not None:
                    bar.set_postfix(loss=f"{smoothed:.4f}", **{k: f"{v:.4f}" for k, v in validation.items()},
                                    refresh=False)
                with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"step": step, "validation": validation}) + "\n")
            stopping = _agree(stop.signal is not None, dist)
            if step % config.save_every == 0 or step == config.steps or stopping:
                _check_replicas(model, dist, step)
                if adversary is not None:
                    _check_replicas(adversary, dist, step)
                if dist.main:
                    save(step)
                    with open(out / "log.jsonl", "a", encoding="utf-8") as handle:
                        handle.write(json.dumps({"step": step, "event": "checkpoint",
                                                 "identical_ranks": dist.world}) + "\n")
                _barrier(dist)
                last_saved, started = step, time.perf_counter()
            if stopping:
                if bar is not None:
                    bar.close()
                raise Interrupted(f"stopped by a signal at step {step}; saved {latest}; resume it to go on")
    if bar is not None:
        bar.close()
    return latest


def _agree(flag: bool, dist: Distributed) -> bool:
    """True on every rank when any rank says so (so all ranks stop at the same step)."""
    if not dist.active:
        return flag
    import torch.distributed

    tensor = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def _fingerprint(model: nn.Module) -> torch.Tensor:
    """Per-tensor sums and sums of squares in float64: equal on every rank when replicas agree."""
    values = [t.detach().double() for t in model.state_dict().values() if t.is_floating_point()]
    return torch.stack([torch.stack([v.sum(), v.square().sum()]) for v in values]).flatten()


def _check_replicas(model: nn.Module, dist: Distributed, step: int) -> None:
    """Fail loudly if data-parallel replicas have drifted apart (they must stay bit-identical)."""
    if not dist.active:
        return
    import torch.distributed

    mine = _fingerprint(model).to(dist.device)
    gathered = [torch.empty_like(mine) for _ in range(dist.world)]
    torch.distributed.all_gather(gathered, mine)
    differing = [rank for rank, theirs in enumerate(gathered) if not torch.equal(theirs, gathered[0])]
    if differing:
        raise TrainingError(f"at step {step} the weights of rank(s) {differing} differ from rank 0's")
    if dist.main:
        log.info("step %d: the weights of all %d ranks are identical", step, dist.world)


def _barrier(dist: Distributed) -> None:
    if dist.active:
        import torch.distributed

        torch.distributed.barrier()
