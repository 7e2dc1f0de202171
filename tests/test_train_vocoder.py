import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from clipsonic.checkpoint import load_checkpoint
from clipsonic.train.vocoder import VocoderTask, VocoderTrainingConfig
from clipsonic.train.loop import TrainConfig, train
from clipsonic.vocoder import BigVGANConfig, load_bigvgan


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Three seconds each of three harmonic tones with tremolo and a little noise."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    for index, f0 in enumerate((220, 330, 440)):
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
        wav *= 0.6 + 0.4 * np.sin(2 * np.pi * (index + 1) * t)
        soundfile.write(folder / f"tone{index}.wav", wav.astype(np.float32), 16000)
    return folder


SETTINGS = VocoderTrainingConfig(segment_samples=4096, discriminator_width=4)


def task(audio):
    torch.manual_seed(0)
    return VocoderTask(audio, BigVGANConfig.preset("tiny"), SETTINGS)


def test_gan_training_resumes_exactly(audio, tmp_path):
    config = TrainConfig(steps=4, batch_size=2, lr=2e-4, betas=(0.8, 0.99), lr_decay=0.999, ema_decay=0.0,
                         save_every=2, keep=0, validate_every=2)
    straight = train(task(audio), config, tmp_path / "a", progress=False)

    def crash(step, loss):
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(task(audio), config, tmp_path / "b", progress=False, on_step=crash)
    resumed = train(task(audio), config, tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(straight, "bigvgan"), load_checkpoint(resumed, "bigvgan")
    for key, tensor in a["extra"]["adversary"].items():
        assert torch.equal(tensor, b["extra"]["adversary"][key]), key
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert any(k.endswith("parametrizations.weight.original0") for k in a["state_dict"])  # trained with weight norm


@pytest.mark.slow
def test_200_tiny_steps_lower_the_validation_mel_l1(audio, tmp_path):
    trainer = task(audio)
    before = trainer.validate(trainer.model.eval())["mel_l1"]
    trainer.model.train()
    config = TrainConfig(steps=200, batch_size=4, lr=2e-4, betas=(0.8, 0.99), lr_decay=0.9999996, ema_decay=0.0,
                         save_every=1000, keep=0, validate_every=100, log_every=50)
    path = train(trainer, config, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    validations = [r["validation"]["mel_l1"] for r in records if "validation" in r]
    assert len(validations) == 2 and validations[-1] < 0.8 * before, (before, validations)
    vocoder = load_bigvgan(path)  # weight norm folded away for inference
    mel = torch.randn(1, 64, 8) - 5
    with torch.no_grad():
        assert vocoder(mel).shape == (1, 1, 8 * 512)


def test_cli_and_its_errors(audio, tmp_path):
    done = subprocess.run([sys.executable, "-m", "clipsonic", "train-vocoder", str(audio), "--out", str(tmp_path / "r"),
                           "--preset", "tiny", "--segment-samples", "4096", "--discriminator-width", "4",
                           "--batch-size", "2", "--steps", "2", "--no-progress"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt", "bigvgan")["extra"]["step"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run([sys.executable, "-m", "clipsonic", "train-vocoder", str(empty), "--out",
                             str(tmp_path / "r2"), "--preset", "tiny"], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "no audio or video files" in failed.stderr
    odd = subprocess.run([sys.executable, "-m", "clipsonic", "train-vocoder", str(audio), "--out", str(tmp_path / "r3"),
                          "--preset", "tiny", "--segment-samples", "1000"], capture_output=True, text=True, timeout=300)
    assert odd.returncode == 1 and "not a multiple of the hop 512" in odd.stderr


def test_reads_a_dataset_folders_sources(audio, tmp_path):
    from clipsonic.audio import MelConfig
    from clipsonic.data import DatasetWriter
    from clipsonic.train.vocoder import find_audio

    writer = DatasetWriter(tmp_path / "data", MelConfig(), 4, source_root=audio)
    for index in range(3):
        writer.add(f"tone{index}", f"tone{index}.wav", np.zeros((64, 10), np.float32), np.zeros((1, 4), np.float32),
                   [0.5], "tone", "test" if index == 2 else "train", 3.0)
    writer.flush()
    assert [p.name for p in find_audio(tmp_path / "data")] == ["tone0.wav", "tone1.wav"]
    orphan = DatasetWriter(tmp_path / "orphan", MelConfig(), 4)
    orphan.flush()
    from clipsonic.errors import ClipsonicError

    with pytest.raises(ClipsonicError, match="does not record where its source files are"):
        find_audio(tmp_path / "orphan")


@pytest.mark.slow
def test_train_vocoder_under_torchrun(audio, tmp_path):
    import os

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "clipsonic", "train-vocoder", str(audio), "--out", str(tmp_path / "ddp"),
                           "--preset", "tiny", "--segment-samples", "4096", "--discriminator-width", "4",
                           "--batch-size", "4", "--steps", "3", "--save-every", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["identical_ranks"]) for e in events if e.get("event") == "checkpoint"] == [(2, 2), (3, 2)]
