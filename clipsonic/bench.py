"""Timing helpers and the benchmarks behind `clipsonic bench`.

Each benchmark times our path against a reference measured in the same run and reports the
ratio (reference time / our time, so > 1 means faster) with the median of several repeats.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import torch


@dataclasses.dataclass(frozen=True)
class Timing:
    name: str
    batch: int
    dtype: str
    seconds: float  # median over repeats
    best: float
    ratio: float | None = None  # reference seconds / these seconds
    agreement: float | None = None  # cosine similarity of outputs to the fp32 reference

    def as_row(self) -> dict:
        return dataclasses.asdict(self)


def time_call(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> tuple[float, float, object]:
    """Median and best wall-clock seconds of `fn()` over `repeat` runs after `warmup` runs, and its last output."""
    output = None
    with torch.inference_mode():
        for _ in range(warmup):
            output = fn()
        samples = []
        for _ in range(repeat):
            start = time.perf_counter()
            output = fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples), output


def bench_clip(model_fp32, batches: Sequence[int], dtypes: Sequence[str], repeat: int = 3,
               warmup: int = 1, seed: int = 0) -> list[Timing]:
    """CLIP image encoding: the eager float32 model (reference) against our float32 and low-precision paths."""
    import copy

    from clipsonic.nn import set_precision
    from clipsonic.runtime import resolve_dtype

    size = model_fp32.config.image_resolution
    generator = torch.Generator().manual_seed(seed)
    rows = []
    variants = {name: set_precision(copy.deepcopy(model_fp32), resolve_dtype(name)) if name != "fp32" else model_fp32
                for name in dtypes}
    for batch in batches:
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        reference_seconds, reference_best, reference_out = time_call(
            lambda: model_fp32.encode_image(pixels), repeat, warmup)
        rows.append(Timing("clip.encode_image (reference: eager fp32)", batch, "fp32", reference_seconds, reference_best, 1.0, 1.0))
        for name, model in variants.items():
            if name == "fp32":
                continue
            seconds, best, out = time_call(lambda: model.encode_image(pixels), repeat, warmup)
            agreement = torch.nn.functional.cosine_similarity(out.float(), reference_out.float()).min().item()
            rows.append(Timing("clip.encode_image", batch, name, seconds, best, reference_seconds / seconds, agreement))
    return rows


def markdown_table(rows: Sequence[Timing]) -> str:
    lines = ["| benchmark | batch | dtype | median s | best s | speed-up vs reference | min cosine vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        agreement = "" if row.agreement is None else f"{row.agreement:.5f}"
        lines.append(f"| {row.name} | {row.batch} | {row.dtype} | {row.seconds:.4f} | {row.best:.4f} | {ratio} | {agreement} |")
    return "\n".join(lines)
