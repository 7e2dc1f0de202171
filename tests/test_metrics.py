import logging

import numpy as np
import pytest

from clipsonic.errors import ClipsonicError
from clipsonic.metrics import (embedding_statistics, frechet_distance, frechet_distance_from_statistics,
                               load_statistics, save_statistics)
from conftest import FIXTURES


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "vggish_reference.npz")


def correlated_set(rng, count, dim=128, decay=20.0, shift=0.0):
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return shift + (rng.standard_normal((count, dim)) * np.exp(-np.arange(dim) / decay)) @ basis.T


@pytest.mark.parametrize("name", ["full", "few"])
def test_matches_frechet_audio_distance(reference, name):
    """`few` has 60 and 40 embeddings of dimension 128: both covariances are singular."""
    a, b = reference[f"fad_{name}_a"], reference[f"fad_{name}_b"]
    expected = float(reference[f"fad_{name}"])
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_statistics(*embedding_statistics(a), *embedding_statistics(b)) == \
        pytest.approx(expected, rel=1e-6)


def test_statistics_are_numpy_mean_and_unbiased_covariance(reference):
    a = reference["fad_full_a"]
    mu, sigma = embedding_statistics(a)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (128, 128)
    np.testing.assert_allclose(mu, a.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(a.astype(np.float64), rowvar=False, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("name", ["full", "few"])
def test_identical_sets_are_at_distance_zero_and_order_does_not_matter(reference, name):
    a, b = reference[f"fad_{name}_a"], reference[f"fad_{name}_b"]
    scale = np.trace(embedding_statistics(a)[1])
    assert 0.0 <= frechet_distance(a, a) <= 1e-9 * scale
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-10)


def test_commuting_covariances_have_the_closed_form():
    """Diagonal covariances (some variances zero: singular) give d² = |Δμ|² + Σ (√a - √b)², in any basis."""
    rng = np.random.default_rng(5)
    var1, var2 = rng.uniform(0, 2, 32), rng.uniform(0, 2, 32)
    var1[:10] = 0.0
    var2[5:12] = 0.0
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    rotation, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    sigma1, sigma2 = (rotation * var1) @ rotation.T, (rotation * var2) @ rotation.T
    diagonal = frechet_distance_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2))
    assert diagonal == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_from_statistics(rotation @ mu1, sigma1, rotation @ mu2, sigma2) == \
        pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("count_a, count_b", [(3, 3), (10, 200), (129, 129), (300, 40)])
def test_never_negative_and_finite_for_any_rank(count_a, count_b):
    rng = np.random.default_rng(count_a * 1000 + count_b)
    for decay in (4.0, 40.0):  # ill-conditioned and moderate spectra
        a = correlated_set(rng, count_a, decay=decay)
        b = correlated_set(rng, count_b, decay=decay, shift=0.1)
        distance = frechet_distance(a, b)
        assert np.isfinite(distance) and distance > 0
        assert frechet_distance(a, a.copy()) >= 0.0


def test_a_mean_shift_adds_its_squared_length():
    rng = np.random.default_rng(6)
    a = correlated_set(rng, 300, dim=16)
    shift = rng.standard_normal(16)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_bad_inputs_are_one_line_errors():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((20, 8))
    with pytest.raises(ClipsonicError, match="at least 2 embeddings"):
        frechet_distance(a[:1], a)
    with pytest.raises(ClipsonicError, match="different dimensions: 8 and 4"):
        frechet_distance(a, a[:, :4])
    with pytest.raises(ClipsonicError, match=r"matrix \[N, D\]"):
        frechet_distance(a[0], a)
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ClipsonicError, match="NaN"):
        frechet_distance(bad, a)
    mu, sigma = embedding_statistics(a)
    with pytest.raises(ClipsonicError, match="not a covariance matrix"):
        frechet_distance_from_statistics(mu, sigma - 2 * np.eye(8) * np.trace(sigma), mu, sigma)
    with pytest.raises(ClipsonicError, match="do not fit"):
        frechet_distance_from_statistics(mu, sigma[:4, :4], mu, sigma)


def test_few_embeddings_draw_a_warning(caplog):
    rng = np.random.default_rng(8)
    with caplog.at_level(logging.WARNING, logger="clipsonic.metrics"):
        embedding_statistics(rng.standard_normal((50, 16)))
    assert "only 50 embeddings" in caplog.text


def test_statistics_cache_round_trip(tmp_path, reference):
    mu, sigma = embedding_statistics(reference["fad_full_b"])
    path = save_statistics(tmp_path / "stats" / "background.npz", mu, sigma, key="abc123", clips=40)
    assert [p.name for p in path.parent.iterdir()] == ["background.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as archive:
        assert str(archive["key"]) == "abc123" and int(archive["clips"]) == 40
    loaded_mu, loaded_sigma = load_statistics(path)
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)
    a = reference["fad_full_a"]
    assert frechet_distance_from_statistics(*embedding_statistics(a), *load_statistics(path)) == \
        frechet_distance(a, reference["fad_full_b"])


def test_statistics_files_are_checked(tmp_path):
    with pytest.raises(ClipsonicError, match="no such statistics file"):
        load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(4))
    with pytest.raises(ClipsonicError, match="other.npz: not embedding statistics"):
        load_statistics(tmp_path / "other.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(ClipsonicError, match="shapes.npz: .*do not fit"):
        load_statistics(tmp_path / "shapes.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(ClipsonicError, match="garbage.npz: unreadable statistics file"):
        load_statistics(tmp_path / "garbage.npz")
