import numpy as np
import pytest
import torch

from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.vggish import VGGish, htk_mel_matrix, load_pca_params, load_vggish, log_mel_examples
from conftest import FIXTURES
from seeded import seeded_state_dict

WEIGHT_SEED = 41  # tests/fixtures/make_vggish_fixture.py


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "vggish_reference.npz")


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    """torchvggish's state dict with the fixture's seeded weights (the real file is 288 MB)."""
    shapes = {name: tuple(tensor.shape) for name, tensor in VGGish().state_dict().items()}
    path = tmp_path_factory.mktemp("vggish") / "vggish-seeded.pth"
    torch.save(seeded_state_dict(shapes, WEIGHT_SEED), path)
    return path


@pytest.fixture(scope="module")
def model(weights_path):
    return load_vggish(weights_path)


def pcm(reference, name):
    """The fixture's int16 signal as float32, channels first."""
    wav = torch.from_numpy(reference[name].astype(np.float32) / 32768)
    return wav.T.contiguous() if wav.dim() == 2 else wav


def relative_error(ours, expected):
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(ours - expected) / np.linalg.norm(expected))


def test_state_dict_keys_are_torchvggish_keys(reference):
    assert sorted(VGGish().state_dict()) == [str(key) for key in reference["state_keys"]]


def test_mel_matrix_is_the_reference_recipe(reference):
    ours = htk_mel_matrix()
    assert ours.shape == (257, 64) and not ours[0].any()
    np.testing.assert_allclose(ours, reference["mel_matrix"], rtol=0, atol=1e-12)


def test_front_end_matches_vggish_input(reference):
    examples = log_mel_examples(pcm(reference, "wav_16k"))
    expected = reference["examples_16k"]
    assert examples.shape == expected.shape == (3, 96, 64)  # 3.1 s: 308 frames, the last 20 dropped
    assert relative_error(examples, expected) <= 1e-5
    assert np.abs(examples.numpy() - expected).max() <= 1e-4


def test_embeddings_match_torchvggish(model, reference):
    wav = pcm(reference, "wav_16k")
    assert relative_error(model.embed(wav), reference["embeddings_16k"]) <= 1e-4
    assert relative_error(model.embed(wav.numpy(), relu=True), reference["embeddings_16k_relu"]) <= 1e-4
    assert (model.embed(wav) < 0).any(), "FAD's embeddings come before the final ReLU"


def test_stereo_44k_is_mixed_and_resampled_like_the_reference(model, reference):
    wav = pcm(reference, "wav_44k")  # [2, T] at 44.1 kHz
    examples = log_mel_examples(wav, 44100)
    assert examples.shape == reference["examples_44k"].shape
    # resampy samples its filter on a slightly rounded grid, so agreement is close, not exact.
    assert relative_error(examples, reference["examples_44k"]) <= 3e-4
    assert relative_error(model.embed(wav, 44100), reference["embeddings_44k"]) <= 1e-4
    torch.testing.assert_close(log_mel_examples(wav.mean(dim=0), 44100), examples)


def test_batches_give_the_per_clip_embeddings(model, reference):
    wav = pcm(reference, "wav_16k")
    clips = [wav[:24000], wav, wav[5000:40000], wav[:8000]]
    singles = [model.embed(clip) for clip in clips]
    assert [len(e) for e in singles] == [1, 3, 2, 0]
    for batch_size in (1, 2, 64):
        together = model.embed_clips(clips, batch_size=batch_size)
        for single, batched in zip(singles, together, strict=True):
            assert batched.shape == single.shape
            torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert model.embed_clips([]) == []
    assert model.embed(torch.zeros(300)).shape == (0, 128)


def test_bfloat16_network_stays_close(weights_path, model, reference):
    fast = load_vggish(weights_path, dtype=torch.bfloat16)
    wav = pcm(reference, "wav_16k")
    out = fast.embed(wav)
    assert out.dtype == torch.float32
    assert relative_error(out, model.embed(wav)) <= 2e-2


def write_pca_file(path, reference, legacy=True):
    """Like torchvggish's vggish_pca_params file: NumPy arrays, by default in a legacy protocol-2
    torch pickle written under NumPy 1 (whose module had no underscore)."""
    params = {"pca_eigen_vectors": reference["pca_eigen_vectors"].astype(np.float64),
              "pca_means": reference["pca_means"].astype(np.float64)}
    if not legacy:
        torch.save(params, path)
        return path
    torch.save(params, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return path


def quantised(embeddings, matrix, means):
    """AudioSet's documented post-processing, in float64 NumPy."""
    pca = (np.asarray(embeddings, np.float64) - means) @ np.asarray(matrix, np.float64).T
    return np.round((np.clip(pca, -2.0, 2.0) + 2.0) * (255.0 / 4.0))


@pytest.mark.parametrize("legacy", [True, False])
def test_pca_postprocessing_matches_torchvggish_and_the_formula(tmp_path, weights_path, reference, legacy):
    pca_path = write_pca_file(tmp_path / "vggish_pca_params.pth", reference, legacy)
    model = load_vggish(weights_path, pca_path)
    wav = pcm(reference, "wav_16k")
    ours = model.embed(wav, relu=True, pca=True).numpy()
    expected = reference["embeddings_16k_pca"]
    assert ours.min() >= 0 and ours.max() <= 255 and 0 < (ours == 255).sum() + (ours == 0).sum() < ours.size / 4
    # Values within a rounding of .5 may land either side; anything else must be equal.
    assert np.abs(ours - expected).max() <= 1 and (ours != expected).mean() <= 0.01
    formula = quantised(model.embed(wav, relu=True), reference["pca_eigen_vectors"], reference["pca_means"])
    assert np.abs(ours - formula).max() <= 1 and (ours != formula).mean() <= 0.01


def test_pca_needs_its_parameters(model, reference):
    with pytest.raises(ClipsonicError, match="no PCA parameters"):
        model.embed(pcm(reference, "wav_16k"), pca=True)


class NotAnArray:
    pass


def test_pca_file_is_read_without_running_code(tmp_path, reference):
    path = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": NotAnArray(), "pca_means": np.zeros(128)}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_pca_params(path)
    torch.save({"pca_eigen_vectors": np.zeros((128, 64)), "pca_means": np.zeros(128)}, path)
    with pytest.raises(CheckpointError, match=r"pca\.pth: PCA parameters of shapes \(128, 64\)"):
        load_pca_params(path)
    torch.save({"pca_means": np.zeros(128)}, path)
    with pytest.raises(CheckpointError, match="not VGGish PCA parameters"):
        load_pca_params(path)
    with pytest.raises(CheckpointError, match="no such PCA parameter file"):
        load_pca_params(tmp_path / "missing.pth")


def small_state():
    """Every key, with the wrong (tiny) shape: enough to exercise the strict loader without 288 MB."""
    return {name: torch.zeros(1) for name in VGGish().state_dict()}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("embeddings.4.bias"), r"missing keys: embeddings\.4\.bias"),
    (lambda s: s.update({"pproc.pca_means": torch.zeros(128, 1)}), r"unexpected keys: pproc\.pca_means"),
    (lambda s: None, r"shape mismatch: features\.0\.weight \(1,\) vs model \(64, 1, 3, 3\)"),
])
def test_loading_is_strict_and_names_the_file(tmp_path, change, message):
    state = small_state()
    change(state)
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="vggish-10086976.pth: does not fit VGGish") as error:
        load_vggish(path)
    assert error.match(message)


def test_loading_rejects_other_files(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": {"features.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="model.pth: not a VGGish state dict"):
        load_vggish(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_vggish(tmp_path / "missing.pth")


def test_demo_width_keeps_the_layout_and_is_small():
    from clipsonic.vggish import VGGishConfig

    demo, full = VGGish(VGGishConfig.preset("demo")), VGGish()
    assert list(demo.state_dict()) == list(full.state_dict())  # the same keys: features.{0,3,6,8,11,13}, embeddings.*
    assert sum(p.numel() for p in demo.parameters()) < 1.3e6 < 72e6 < sum(p.numel() for p in full.parameters())
    assert demo(torch.zeros(3, 96, 64)).shape == (3, 128)


def test_our_checkpoint_round_trips_with_its_classifier_head(tmp_path):
    from clipsonic.vggish import VGGishConfig, classifier, save_vggish

    torch.manual_seed(0)
    model = VGGish(VGGishConfig.preset("demo"))
    model.origin, model.classes = "demo", ("low", "high")
    model.head = (torch.randn(2, 128), torch.randn(2))
    loaded = load_vggish(save_vggish(tmp_path / "vggish.pt", model))
    assert loaded.origin == "demo" and loaded.classes == ("low", "high") and loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded.head[0], model.head[0]) and torch.equal(loaded.head[1], model.head[1])
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(16000 * 2).astype(np.float32) * 0.1 for _ in range(3)]
    embeddings = loaded.embed_clips(clips)
    expected = [loaded.classes[int((e @ model.head[0].t() + model.head[1]).mean(0).argmax())] for e in embeddings]
    assert classifier(loaded).predict(clips) == expected
    with pytest.raises(CheckpointError, match="no classifier head"):
        classifier(VGGish(VGGishConfig.preset("demo")))


def test_demo_vggish_learns_to_tell_two_sounds_apart():
    """train_demo_vggish on two synthetic classes for a few steps: held-out clips are told apart."""
    from clipsonic.demo.embedding import train_demo_vggish
    from clipsonic.demo.synthetic import ClipSpec, clip_audio
    from clipsonic.vggish import classifier

    specs = [ClipSpec(label, index, 2.0, "train", 0) for label in ("engine", "bird") for index in range(4)]
    model = train_demo_vggish(specs, ("engine", "bird"), steps=30, batch_size=16, seed=0)
    held_out = [ClipSpec(label, 50 + index, 2.0, "reference", 0) for label in ("engine", "bird") for index in range(3)]
    assert classifier(model).predict([clip_audio(spec) for spec in held_out]) == ["engine"] * 3 + ["bird"] * 3
