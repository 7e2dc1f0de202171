import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from clipsonic import clip
from clipsonic.trainloop import TrainConfig, train
from clipsonic.train_diffusion import DiffusionTask, DiffusionTrainingConfig
from clipsonic.data import Dataset
from clipsonic.prior import PriorConfig
from clipsonic.train_prior import PriorTask
from clipsonic.unet import UNetConfig
from toydata import make_toy_dataset


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny CLIP (64-d embeddings, 64-wide text), a UNet and an SD prior trained two steps on toy data."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    clip.save_clip(folder / "clip.pt", clip.CLIP(clip.CLIPConfig.preset("tiny", text_width=64, text_mlp_width=256)))
    data = make_toy_dataset(folder / "data", embed_dim=64, text_width=64)
    task = DiffusionTask(Dataset(data, split="train"), UNetConfig.preset("tiny"),
                         DiffusionTrainingConfig(crop_frames=16, diffusion_steps=100))
    train(task, TrainConfig(steps=2, batch_size=2, save_every=2, keep=0), folder / "run", progress=False)
    shutil.copy(folder / "run" / "checkpoint.pt", folder / "unet.pt")
    prior_task = PriorTask(Dataset(data, split="train"), PriorConfig.preset("tiny"))
    train(prior_task, TrainConfig(steps=2, batch_size=2, save_every=2, keep=0), folder / "prior-run", progress=False)
    shutil.copy(folder / "prior-run" / "checkpoint.pt", folder / "sd-prior.pt")
    return folder


def sample(models, *args):
    return subprocess.run([sys.executable, "-m", "clipsonic", "sample", "--clip", str(models / "clip.pt"),
                           "--checkpoint", str(models / "unet.pt"), "--steps", "3", "--seconds", "1", *args],
                          capture_output=True, text=True, timeout=300)


def test_text_sample_writes_audio_and_is_reproducible(models, tmp_path):
    first = sample(models, "--text", "a photo of rain", "--seed", "7", "-o", str(tmp_path / "a.wav"), "--save-mel")
    assert first.returncode == 0, first.stderr
    wav, rate = soundfile.read(tmp_path / "a.wav")
    assert rate == 16000 and wav.shape == (16000,) and np.isfinite(wav).all()
    assert np.load(tmp_path / "a.npy").shape == (16, 32)  # 1 s -> 31.25 frames -> a multiple of 2
    # (The files' bytes differ: libsndfile stamps float WAVs with the time in a PEAK chunk.)
    again = sample(models, "--text", "a photo of rain", "--seed", "7", "-o", str(tmp_path / "b.wav"))
    assert again.returncode == 0 and np.array_equal(soundfile.read(tmp_path / "b.wav")[0], wav)
    other = sample(models, "--text", "a photo of rain", "--seed", "8", "-o", str(tmp_path / "c.wav"))
    assert other.returncode == 0 and not np.array_equal(soundfile.read(tmp_path / "c.wav")[0], wav)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batch_and_other_samplers(models, tmp_path, sampler):
    done = sample(models, "--text", "bells", "--batch", "2", "--sampler", sampler, "--guidance", "3",
                  "-o", str(tmp_path / "out.flac"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_0.flac", "out_1.flac"]


def test_image_query(models, tmp_path):
    image = tmp_path / "picture.png"
    subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=1",
                    "-frames:v", "1", str(image)], check=True)
    done = sample(models, "--image", str(image), "-o", str(tmp_path / "image.wav"), "-v")
    assert done.returncode == 0, done.stderr
    assert "variant iq" in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--text", "   "], "clipsonic: error: --text is empty"),
    (["--image", "missing.png"], "missing.png: no such file"),
    (["--text", "rain", "--variant", "iq"], "variant iq needs an image"),
])
def test_bad_queries_are_one_line_errors(models, tmp_path, args, message):
    done = sample(models, *args, "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_unreadable_image(models, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = sample(models, "--image", str(broken), "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 1 and "broken.png: unreadable or corrupt media" in done.stderr


def test_pipeline_api(models):
    import clipsonic

    pipeline = clipsonic.Pipeline.load(models)
    wav = pipeline.generate(text="a photo of rain", steps=2, seconds=0.5, seed=3, batch=2)
    assert wav.shape == (2, 8000)
    torch.testing.assert_close(wav, pipeline.generate(text="a photo of rain", steps=2, seconds=0.5, seed=3, batch=2))


def test_prior_variants(models, tmp_path):
    prior = str(models / "sd-prior.pt")
    done = sample(models, "--text", "a photo of rain", "--prior", prior, "--seed", "2", "-o", str(tmp_path / "sd.wav"),
                  "-v")
    assert done.returncode == 0, done.stderr
    assert "variant sd" in done.stderr
    again = sample(models, "--text", "a photo of rain", "--prior", prior, "--seed", "2", "-o", str(tmp_path / "sd2.wav"))
    assert np.array_equal(soundfile.read(tmp_path / "sd.wav")[0], soundfile.read(tmp_path / "sd2.wav")[0])
    wrong = sample(models, "--text", "rain", "--prior", prior, "--variant", "pd", "-o", str(tmp_path / "pd.wav"))
    assert wrong.returncode == 1 and "variant pd needs LAION's pretrained prior" in wrong.stderr
    missing = sample(models, "--text", "rain", "--variant", "sd", "-o", str(tmp_path / "x.wav"))
    assert missing.returncode == 1 and "variant sd needs a diffusion prior (--prior)" in missing.stderr


def test_bigvgan_vocoder(models, tmp_path):
    from clipsonic.vocoder import BigVGAN, BigVGANConfig, save_bigvgan

    torch.manual_seed(0)
    save_bigvgan(tmp_path / "voc16.pt", BigVGAN(BigVGANConfig.preset("tiny", num_mels=16)))
    save_bigvgan(tmp_path / "voc64.pt", BigVGAN(BigVGANConfig.preset("tiny")))
    done = sample(models, "--text", "rain", "--vocoder", str(tmp_path / "voc16.pt"), "--seed", "1",
                  "-o", str(tmp_path / "v.wav"))
    assert done.returncode == 0, done.stderr
    wav, rate = soundfile.read(tmp_path / "v.wav")
    assert rate == 16000 and wav.shape == (16000,) and np.abs(wav).max() <= 1.0
    griffin = sample(models, "--text", "rain", "--seed", "1", "-o", str(tmp_path / "g.wav"))
    assert griffin.returncode == 0 and not np.array_equal(soundfile.read(tmp_path / "g.wav")[0], wav)
    wrong = sample(models, "--text", "rain", "--vocoder", str(tmp_path / "voc64.pt"), "-o", str(tmp_path / "w.wav"))
    assert wrong.returncode == 1 and "the vocoder expects 64 mels" in wrong.stderr
