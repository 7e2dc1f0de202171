"""The Fréchet distance between two sets of embeddings (FAD when they are VGGish embeddings).

Each set is summarised by its mean μ and covariance Σ (``np.cov``: unbiased, N - 1), and

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½

as in frechet-audio-distance (after pytorch-fid), which the paper used. That takes the trace
of ``scipy.linalg.sqrtm(Σ₁ Σ₂)``, a general (Schur) square root of a non-symmetric product.
Here no scipy is needed: Σ₁ Σ₂ = Σ₁^½ · (Σ₁^½ Σ₂) has the eigenvalues of (Σ₁^½ Σ₂) · Σ₁^½,
the symmetric positive semi-definite M = Σ₁^½ Σ₂ Σ₁^½ (AB and BA share eigenvalues, singular
or not), so tr (Σ₁ Σ₂)^½ = Σᵢ √λᵢ(M), and both square roots come from symmetric
eigendecompositions (``eigh``) in float64. Singular covariances (fewer embeddings than
dimensions) need no special case.

Rounding makes the zero eigenvalues of a singular PSD matrix come out as tiny numbers of
either sign; those are set to 0 rather than square-rooted (which would turn 1e-16 into 1e-8).
Against 40-digit arithmetic (64-d tests) this agreed to ~1e-9 relative on singular
covariances and ~1e-14 on full-rank ones, where sqrtm was off by up to ~2e-8 and ~4e-12.
The distance is never negative: a negative result within the rounding bound of
`frechet_distance_from_statistics` is returned as 0; beyond it, the inputs are not
covariances, which is an error.

Reference statistics can be cached as .npz files (`save_statistics` / `load_statistics`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from clipsonic.errors import ClipsonicError
from clipsonic.fileio import atomic_path

log = logging.getLogger(__name__)

MIN_EMBEDDINGS = 2  # a covariance needs two samples
FEW_EMBEDDINGS = 128  # VGGish's dimension: with fewer embeddings its covariance is singular
_EPS = np.finfo(np.float64).eps
# Eigenvalues below -this x the largest are more negative than even float32 rounding explains.
_NOT_PSD = 1e-6
# Positive rounding noise reaches a few times the most negative eigenvalue's size; against
# 40-digit arithmetic, 4 was as accurate as any larger multiple on singular covariances.
_NOISE_MULTIPLE = 4.0


def embedding_statistics(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] -> (mean [D], covariance [D, D] with N - 1 degrees of freedom), float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ClipsonicError(f"embeddings must be a matrix [N, D], got shape {x.shape}")
    if x.shape[0] < MIN_EMBEDDINGS:
        raise ClipsonicError(f"the Fréchet distance needs at least {MIN_EMBEDDINGS} embeddings per set, "
                             f"got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ClipsonicError("embeddings contain NaN or infinite values")
    if x.shape[0] < FEW_EMBEDDINGS or x.shape[0] <= x.shape[1]:
        log.warning("only %d embeddings of dimension %d: the Fréchet distance is strongly biased "
                    "(use %d or more)", x.shape[0], x.shape[1], max(FEW_EMBEDDINGS, x.shape[1] + 1))
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _noise_floor(eigenvalues: np.ndarray) -> float:
    """Below this an eigenvalue of a PSD matrix is rounding noise. The rounded eigenvalues of a
    singular matrix scatter around 0 on both sides, so the most negative one measures the
    scatter; a matrix without negative eigenvalues is taken as it is."""
    return _NOISE_MULTIPLE * max(-float(eigenvalues.min()), 0.0)


def _psd_eigenvalues(eigenvalues: np.ndarray, name: str) -> np.ndarray:
    largest = float(np.abs(eigenvalues).max())
    if eigenvalues.min() < -_NOT_PSD * largest:
        raise ClipsonicError(f"{name} is not a covariance matrix (eigenvalue {eigenvalues.min():.3g}, "
                             f"largest {largest:.3g})")
    return np.where(eigenvalues > _noise_floor(eigenvalues), eigenvalues, 0.0)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return (matrix + matrix.T) / 2


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> tuple[float, float]:
    """tr (Σ₁ Σ₂)^½ for PSD Σ₁, Σ₂ [D, D], and a bound on its rounding error.

    eigh returns each eigenvalue of M to within about D·ε·λmax(M); a square root turns that
    into at most √(D·ε·λmax) per eigenvalue (the factor _NOISE_MULTIPLE covers the dropped
    noise), so the trace is good to D times that.
    """
    values, vectors = np.linalg.eigh(sigma1)
    root = (vectors * np.sqrt(_psd_eigenvalues(values, "sigma1"))) @ vectors.T  # Σ₁^½
    product = np.linalg.eigvalsh(_symmetric(root @ sigma2 @ root))
    kept = _psd_eigenvalues(product, "the covariance product")
    size = product.size
    error = size * np.sqrt(_NOISE_MULTIPLE * size * _EPS * max(float(product.max()), 0.0))
    return float(np.sqrt(kept).sum()), float(error)


def _checked(mu: np.ndarray, sigma: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ClipsonicError(f"statistics {side}: mean {mu.shape} and covariance {sigma.shape} do not fit "
                             "(expected [D] and [D, D])")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ClipsonicError(f"statistics {side} contain NaN or infinite values")
    return mu, _symmetric(sigma)


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                                     sigma2: np.ndarray) -> float:
    """d² between N(mu1, sigma1) and N(mu2, sigma2): means [D], covariances [D, D]; float64, >= 0."""
    mu1, sigma1 = _checked(mu1, sigma1, 1)
    mu2, sigma2 = _checked(mu2, sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ClipsonicError(f"the two sets have different dimensions: {mu1.size} and {mu2.size}")
    diff = mu1 - mu2
    trace_root, trace_error = trace_sqrt_product(sigma1, sigma2)
    positive_part = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2))
    distance = positive_part - 2 * trace_root
    if distance < 0:
        # d² is a squared (Wasserstein) distance: only rounding, in the trace of the root and
        # in the float64 sums over D terms, can make it negative, and by no more than this.
        rounding = 2 * trace_error + 8 * mu1.size * _EPS * positive_part
        if distance < -rounding:
            raise ClipsonicError(f"Fréchet distance came out at {distance:.3g}, below its rounding bound "
                                 f"-{rounding:.3g}: the covariances are not positive semi-definite")
        distance = 0.0
    return distance


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between embedding sets `a` [N, D] and `b` [M, D] (N, M >= 2), float64."""
    return frechet_distance_from_statistics(*embedding_statistics(a), *embedding_statistics(b))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **metadata: str | float) -> Path:
    """Write a set's mean [D] and covariance [D, D] as a float64 .npz, atomically; returns the path.

    `metadata` (strings or numbers, e.g. a cache key) is stored beside them as 0-d arrays, which
    read back without pickling: ``np.load(path)["key"]``.
    """
    mu, sigma = _checked(mu, sigma, 1)
    clashes = {"mu", "sigma"} & set(metadata)
    if clashes:
        raise ValueError(f"metadata cannot be named {', '.join(sorted(clashes))}")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mu=mu, sigma=sigma, **{name: np.asarray(value) for name, value in metadata.items()})
    return Path(path)


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A mean [D] and covariance [D, D] written by `save_statistics`."""
    source = Path(path)
    if not source.is_file():
        raise ClipsonicError(f"{source}: no such statistics file")
    try:
        with np.load(source, allow_pickle=False) as data:
            if not {"mu", "sigma"} <= set(data.files):
                raise ClipsonicError(f"{source}: not embedding statistics (needs 'mu' and 'sigma')")
            mu, sigma = data["mu"], data["sigma"]
    except (OSError, ValueError) as error:
        raise ClipsonicError(f"{source}: unreadable statistics file ({error})") from None
    try:
        return _checked(mu, sigma, 1)
    except ClipsonicError as error:
        raise ClipsonicError(f"{source}: {error}") from None
