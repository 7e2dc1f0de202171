"""`clipsonic.bundle` and `clipsonic bundle make|verify`: one folder of models, checked at every load."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from clipsonic import cli, clip
from clipsonic.bundle import make_bundle, open_bundle
from clipsonic.data import Dataset
from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.pipeline import Pipeline
from clipsonic.prior import PriorConfig
from clipsonic.train.unet import DiffusionTask, DiffusionTrainingConfig
from clipsonic.train.prior import PriorTask
from clipsonic.train.loop import TrainConfig, train
from clipsonic.unet import UNetConfig
from toydata import make_toy_dataset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny CLIP and the training runs of a UNet and an SD prior (two steps each, toy data)."""
    folder = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    clip.save_clip(folder / "clip.pt", clip.CLIP(clip.CLIPConfig.preset("tiny", text_width=64, text_mlp_width=256)))
    data = Dataset(make_toy_dataset(folder / "data", embed_dim=64, text_width=64), split="train")
    loop = TrainConfig(steps=2, batch_size=2, save_every=2, keep=0)
    train(DiffusionTask(data, UNetConfig.preset("tiny"), DiffusionTrainingConfig(crop_frames=16, diffusion_steps=100)),
          loop, folder / "unet", progress=False)
    train(PriorTask(data, PriorConfig.preset("tiny")), loop, folder / "prior", progress=False)
    return folder


@pytest.fixture(scope="module")
def bundle(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "mine"
    make_bundle(out, runs / "clip.pt", runs / "unet" / "checkpoint.pt", prior=runs / "prior" / "checkpoint.pt")
    return out


def _generate(pipeline: Pipeline) -> torch.Tensor:
    return pipeline.generate(text="a photo of rain", steps=2, seconds=1.0, seed=3)


def test_a_made_bundle_holds_sampling_checkpoints_and_their_hashes(bundle, runs):
    made = open_bundle(bundle)
    assert made.verified and sorted(made.files) == ["clip", "prior", "unet"]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["format"] == "clipsonic.bundle" and manifest["files"]["unet"]["file"] == "unet.pt"
    training = (runs / "unet" / "checkpoint.pt").stat().st_size
    assert (bundle / "unet.pt").stat().st_size < training  # the optimizer and raw weights are left out
    from_bundle = Pipeline.load(bundle)
    explicit = Pipeline.load(clip=runs / "clip.pt", checkpoint=runs / "unet" / "checkpoint.pt",
                             prior=runs / "prior" / "checkpoint.pt")
    assert from_bundle.default_variant(None) == "sd"
    assert torch.equal(_generate(from_bundle), _generate(explicit))
    assert not [path for path in bundle.parent.iterdir() if path.name.startswith(".")]  # no staging left


def test_a_changed_byte_is_refused_naming_the_file(bundle, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    data = bytearray((damaged / "unet.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (damaged / "unet.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"unet\.pt: differs from what .*bundle\.json records"):
        Pipeline.load(damaged)
    assert cli.main(["sample", "--bundle", str(damaged), "--text", "rain", "-o", str(tmp_path / "x.wav")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unet.pt: differs" in error
    assert not (tmp_path / "x.wav").exists()
    assert cli.main(["bundle", "verify", str(damaged)]) == 1


def test_a_folder_without_bundle_json_still_loads_with_a_warning(bundle, tmp_path, caplog):
    legacy = tmp_path / "legacy"
    shutil.copytree(bundle, legacy)
    (legacy / "bundle.json").unlink()
    with caplog.at_level(logging.WARNING, logger="clipsonic"):
        pipeline = Pipeline.load(legacy)
    assert "has no bundle.json, so its files are not checked" in caplog.text
    assert torch.equal(_generate(pipeline), _generate(Pipeline.load(bundle)))


def test_a_make_that_fails_leaves_nothing(runs, tmp_path):
    torch.manual_seed(1)
    other = clip.save_clip(tmp_path / "other.pt", clip.CLIP(clip.CLIPConfig.preset("tiny", embed_dim=32)))
    with pytest.raises(ClipsonicError, match="CLIP embeddings are 32-d but .* was trained on 64-d"):
        make_bundle(tmp_path / "out", other, runs / "unet" / "checkpoint.pt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.pt"]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(ClipsonicError, match="holds other files and no bundle.json"):
        make_bundle(tmp_path / "home", runs / "clip.pt", runs / "unet" / "checkpoint.pt")
    assert [path.name for path in (tmp_path / "home").iterdir()] == ["notes.txt"]


def test_the_bundle_commands(runs, tmp_path, capsys):
    out = tmp_path / "cli-bundle"
    assert cli.main(["bundle", "make", str(out), "--clip", str(runs / "clip.pt"), "--unet",
                     str(runs / "unet" / "checkpoint.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"unet     {out / 'unet.pt'}" in printed and "bundle.json" in printed
    assert cli.main(["bundle", "verify", str(out)]) == 0
    assert "every file matches bundle.json" in capsys.readouterr().out
    assert cli.main(["sample", "--bundle", str(out), "--text", "rain", "--steps", "2", "--seconds", "1",
                     "-o", str(tmp_path / "rain.wav")]) == 0
    import soundfile

    wav, rate = soundfile.read(tmp_path / "rain.wav")
    assert rate == 16000 and wav.shape == (16000,) and np.isfinite(wav).all()


def test_a_bundle_recommends_its_guidance_to_sample(runs, tmp_path, capsys):
    out = tmp_path / "guided"
    assert cli.main(["bundle", "make", str(out), "--clip", str(runs / "clip.pt"), "--unet",
                     str(runs / "unet" / "checkpoint.pt"), "--guidance", "1"]) == 0
    assert json.loads((out / "bundle.json").read_text())["sampling"] == {"guidance": 1.0}
    pipeline = Pipeline.load(out)
    assert pipeline.guidance == 1.0 and Pipeline.load(
        clip=runs / "clip.pt", checkpoint=runs / "unet" / "checkpoint.pt").guidance == 1.5
    weights, generate_mel = [], pipeline.generate_mel
    pipeline.generate_mel = lambda query, guidance, *rest, **named: weights.append(guidance) or generate_mel(
        query, guidance, *rest, **named)
    _generate(pipeline)
    pipeline.generate(text="a photo of rain", guidance=2.0, steps=2, seconds=1.0, seed=3)
    assert weights == [1.0, 2.0]  # the bundle's weight when none is named
    capsys.readouterr()
    assert cli.main(["sample", "--bundle", str(out), "--text", "rain", "--steps", "2", "--seconds", "1",
                     "-o", str(tmp_path / "rain.wav")]) == 0
    assert "guidance 1," in capsys.readouterr().err
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["sampling"]["guidance"] = -2
    (out / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ClipsonicError, match="sampling.guidance -2 is not a non-negative number"):
        open_bundle(out)
    with pytest.raises(SystemExit) as exited:
        cli.main(["bundle", "make", str(tmp_path / "bad"), "--clip", str(runs / "clip.pt"), "--unet",
                  str(runs / "unet" / "checkpoint.pt"), "--guidance", "nan"])
    assert exited.value.code == 2
    assert "--guidance nan: must be a non-negative number" in capsys.readouterr().err
