import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from clipsonic import clip
from clipsonic.train.loop import TrainConfig, train
from clipsonic.train.unet import DiffusionTask, DiffusionTrainingConfig
from clipsonic.data import Dataset
from clipsonic.prior import PriorConfig
from clipsonic.train.prior import PriorTask
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


@pytest.mark.parametrize("args,code,message", [
    (["--text", "   "], 2, "clipsonic sample: error: --text is empty"),
    (["--image", "missing.png"], 1, "missing.png: no such file"),
    (["--text", "rain", "--variant", "iq"], 2, "--variant iq needs --image"),
])
def test_bad_queries_are_one_line_errors(models, tmp_path, args, code, message):
    done = sample(models, *args, "-o", str(tmp_path / "x.wav"))
    assert done.returncode == code and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and errors[0] == done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args,message", [
    (["--guidance", "nan"], "--guidance nan: must be a finite number"),
    (["--guidance", "inf"], "--guidance inf: must be a finite number"),
    (["--seconds", "1e9"], "--seconds 1000000000.0: must be more than 0 and at most 60"),
    (["--seconds", "nan"], "--seconds nan: must be more than 0 and at most 60"),
    (["--seconds", "-1"], "--seconds -1.0: must be more than 0"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--steps", "101"], "--steps 101: must be between 1 and 100, the model's diffusion length"),
    (["--batch", "0"], "--batch 0: must be at least 1"),
    (["--seed", "9223372036854775808"], "argument --seed: 9223372036854775808 is out of range (0 to 2**63-1)"),
    (["--seed", "-3"], "argument --seed: -3 is out of range"),
    (["--loudness", "3"], "--loudness 3.0: must be between -70 and 0 LUFS"),
    (["--loudness", "nan"], "--loudness nan: must be between -70 and 0 LUFS"),
    (["-o", "/proc/x.wav"], "-o /proc/x.wav: cannot create files in /proc"),
    (["-o", "{tmp}/out.mp3"], "the file must end in .wav or .flac"),
    (["-o", "{tmp}/folder.wav"], "folder.wav is a folder"),
    (["-o", "{tmp}/file.txt/x.wav"], "file.txt is not a folder"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_settings_are_usage_errors_before_any_work(models, tmp_path, args, message):
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "file.txt").write_text("a file, not a folder")
    args = [arg.format(tmp=tmp_path) for arg in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.wav")]
    done = sample(models, "--text", "rain", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.wav"]  # nothing written


def test_output_folders_are_made(models, tmp_path):
    done = sample(models, "--text", "rain", "--seed", "1", "-o", str(tmp_path / "new" / "deeper" / "x.flac"))
    assert done.returncode == 0, done.stderr
    assert soundfile.info(tmp_path / "new" / "deeper" / "x.flac").samplerate == 16000


def test_non_finite_output_is_an_error_that_writes_nothing(models, tmp_path):
    checkpoint = torch.load(models / "unet.pt", weights_only=True)
    name = next(key for key in checkpoint["state_dict"] if key.endswith("weight"))
    checkpoint["state_dict"][name].fill_(float("nan"))
    torch.save(checkpoint, tmp_path / "nan.pt")
    done = subprocess.run([sys.executable, "-m", "clipsonic", "sample", "--clip", str(models / "clip.pt"),
                           "--checkpoint", str(tmp_path / "nan.pt"), "--steps", "2", "--seconds", "1", "--text", "rain",
                           "--batch", "2", "--save-mel", "-o", str(tmp_path / "out" / "x.wav")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "NaN/Inf" in done.stderr and "nothing written" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_files_never_exceed_full_scale_and_loudness_on_request(models, tmp_path):
    from clipsonic.loudness import integrated_loudness

    done = sample(models, "--text", "rain", "--seed", "4", "--batch", "3", "-o", str(tmp_path / "raw.wav"), "-v")
    assert done.returncode == 0, done.stderr
    raw = [soundfile.read(tmp_path / f"raw_{i}.wav")[0] for i in range(3)]
    assert all(np.abs(wav).max() <= 1.0 for wav in raw)
    loud = sample(models, "--text", "rain", "--seed", "4", "--batch", "3", "--loudness", "-30",
                  "-o", str(tmp_path / "loud.wav"))
    assert loud.returncode == 0, loud.stderr
    measured = 0
    for index, wav in enumerate(raw):
        normalised = soundfile.read(tmp_path / f"loud_{index}.wav")[0]
        assert np.abs(normalised).max() <= 1.0
        if np.abs(normalised).max() < 0.89:  # not touched by the peak guard after normalising
            assert abs(integrated_loudness(normalised, 16000) - (-30)) < 0.05
            measured += 1
        # the same sound, only its level changed
        assert abs(np.corrcoef(normalised, wav)[0, 1]) > 0.9999
    assert measured >= 2  # -30 LUFS leaves headroom for these samples: the loudness itself was checked


def test_playable_keeps_the_level_unless_it_would_clip():
    from clipsonic.audio import PEAK_CEILING_DBFS, playable

    rng = torch.Generator().manual_seed(0)
    quiet = 0.3 * torch.randn(16000, generator=rng).clamp(-3, 3) / 3
    same, change = playable(quiet, 16000)
    assert torch.equal(same, quiet) and change.peak_gain_db == 0 and change.loudness_gain_db == 0
    loud = quiet * 40
    fitted, change = playable(loud, 16000)
    assert abs(20 * np.log10(fitted.abs().max().item()) - PEAK_CEILING_DBFS) < 1e-4
    assert change.peak_gain_db < -20 and change.peak == pytest.approx(loud.abs().max().item())
    with pytest.raises(ValueError, match="NaN or Inf"):
        playable(torch.tensor([0.0, float("nan")]), 16000)
    silent, change = playable(torch.zeros(16000), 16000, loudness=-23)
    assert torch.equal(silent, torch.zeros(16000)) and change.loudness_gain_db == 0


def test_save_audio_refuses_non_finite_samples(tmp_path):
    from clipsonic.audio import save_audio

    with pytest.raises(ValueError, match="NaN or Inf values"):
        save_audio(tmp_path / "bad.wav", torch.tensor([0.0, float("inf")]))
    assert not any(tmp_path.iterdir())


def test_large_batches_run_in_chunks(models, monkeypatch, tmp_path):
    import clipsonic
    from clipsonic import pipeline as pipeline_module

    model = clipsonic.Pipeline.load(models)
    whole = model.generate(text="rain", steps=2, seconds=0.5, seed=5, batch=3)
    monkeypatch.setattr(pipeline_module, "CHUNK_FRAMES", 32)  # 0.5 s = 16 frames: chunks of 2
    assert model.chunk_size(0.5) == 2
    chunks = list(model.generate_chunks(text="rain", steps=2, seconds=0.5, seed=5, batch=5))
    assert [(c.start, len(c.wav)) for c in chunks] == [(0, 2), (2, 2), (4, 1)]
    # the first chunk is what the same seed gives unchunked; later chunks draw other noise
    torch.testing.assert_close(chunks[0].wav, model.generate(text="rain", steps=2, seconds=0.5, seed=5, batch=2))
    assert not torch.equal(chunks[1].wav, whole[:2])
    done = sample(models, "--text", "rain", "--seconds", "8", "--steps", "1", "--batch", "9",
                  "-o", str(tmp_path / "many.wav"))
    assert done.returncode == 0, done.stderr
    assert "--batch 9: generating 2 chunks of up to 8 samples" in done.stderr
    assert len(list(tmp_path.glob("many_*.wav"))) == 9


def test_pipeline_settings_errors_name_the_parameter(models):
    import clipsonic
    from clipsonic.pipeline import SettingError

    model = clipsonic.Pipeline.load(models)
    for settings, parameter in [({"guidance": float("nan")}, "guidance"), ({"seconds": 1e9}, "seconds"),
                                ({"steps": 10**5}, "steps"), ({"seed": -1}, "seed"), ({"sampler": "euler"}, "sampler")]:
        with pytest.raises(SettingError, match=f"^{parameter} = ") as caught:
            model.generate(text="rain", **settings)
        assert caught.value.parameter == parameter and "--" not in str(caught.value)


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
    assert again.returncode == 0, again.stderr
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


def test_auto_precision_follows_the_cpu():
    from clipsonic import runtime

    cpu = torch.device("cpu")
    expected = torch.bfloat16 if runtime.cpu_bf16_support() else torch.float32
    assert runtime.resolve_dtype("auto", cpu) == expected
    assert runtime.auto_dtype(torch.device("cuda"))[0] == "fp32"  # not yet measured on a GPU
    with pytest.raises(ValueError, match="needs the device"):
        runtime.resolve_dtype("auto")


# ---------------------------------------------------------------- LAION-CLAP: best of N, CLAP-TTA


@pytest.fixture(scope="module")
def clap_models(models):
    """Tiny CLAPs (our checkpoints, tokenizer files beside them) and a CLAP-TTA UNet trained two
    steps on the toy data. The CLAP-TTA one has 64-d embeddings like the tiny CLIP: loading a
    UNet checks the CLIP's width against it (`clipsonic.bundle.load_models`)."""
    from clipsonic.clap import load_clap
    from clipsonic.variants import CLAP_TEXT
    from tiny_clap import save_tiny_clap

    narrow = save_tiny_clap(models / "clap32", joint_dim=32)
    wide = save_tiny_clap(models / "clap64", joint_dim=64, seed=2)
    torch.manual_seed(0)
    task = DiffusionTask(Dataset(models / "data", split="train"), UNetConfig.preset("tiny"),
                         DiffusionTrainingConfig(crop_frames=16, diffusion_steps=100, condition=CLAP_TEXT),
                         clap=load_clap(wide))
    train(task, TrainConfig(steps=2, batch_size=2, save_every=2, keep=0), models / "clap-tta-run", progress=False)
    shutil.copy(models / "clap-tta-run" / "checkpoint.pt", models / "clap-tta.pt")
    return {"narrow": narrow, "wide": wide, "unet": models / "clap-tta.pt"}


def test_best_of_n_keeps_each_outputs_highest_clap_score(models, clap_models, monkeypatch):
    import clipsonic
    from clipsonic import pipeline as pipeline_module
    from clipsonic.clap import clap_score, load_clap
    from clipsonic.rerank import best_of, clap_scorer

    model, clap = clipsonic.Pipeline.load(models), load_clap(clap_models["narrow"])
    monkeypatch.setattr(pipeline_module, "CHUNK_FRAMES", 32)  # 0.5 s = 16 frames: chunks of 2, across outputs
    settings = {"text": "rain", "steps": 2, "seconds": 0.5, "seed": 6, "batch": 12}
    candidates = model.generate(**settings)
    text = clap.embed_text(["rain"])
    alone = torch.tensor([clap_score(clap.embed_audio(wav[None], 16000), text)[0] for wav in candidates]).view(4, 3)
    choices = list(best_of(model.generate_chunks(**settings), 3, clap_scorer(clap, "rain", 16000)))
    assert [choice.index for choice in choices] == [0, 1, 2, 3]
    for choice, scores in zip(choices, alone):
        torch.testing.assert_close(torch.tensor(choice.scores), scores, rtol=1e-4, atol=1e-5)
        assert choice.winner == int(torch.tensor(choice.scores).argmax())
        assert scores[choice.winner] >= scores.max() - 3e-5  # the best scored alone, up to batching's rounding
        assert torch.equal(choice.wav, candidates[3 * choice.index + choice.winner])
    assert {choice.winner for choice in choices} != {0}  # not merely the first candidate each time
    with pytest.raises(ValueError, match="left over"):
        list(best_of(model.generate_chunks(**{**settings, "batch": 5}), 3, clap_scorer(clap, "rain", 16000)))


def test_sample_candidates_keeps_the_best_and_is_reproducible(models, clap_models, tmp_path):
    import re

    import clipsonic
    from clipsonic.audio import playable

    args = ["--text", "rain", "--candidates", "3", "--batch", "2", "--clap", str(clap_models["narrow"]), "--seed", "5",
            "--dtype", "fp32"]
    first = sample(models, *args, "-o", str(tmp_path / "a" / "x.wav"))
    again = sample(models, *args, "-o", str(tmp_path / "b" / "x.wav"))
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    lines = [line for line in first.stderr.splitlines() if "candidate" in line]
    assert lines == [line for line in again.stderr.splitlines() if "candidate" in line] and len(lines) == 2
    assert "best of 3 by CLAP score" in first.stderr
    candidates = clipsonic.Pipeline.load(models).generate(text="rain", steps=3, seconds=1, seed=5, batch=6)
    for index, line in enumerate(lines):
        found = re.fullmatch(rf"x_{index}\.wav: candidate (\d) of 3, CLAP score (\S+) \(all: (\S+) (\S+) (\S+)\)", line)
        assert found, line
        winner, scores = int(found[1]) - 1, [float(value) for value in found.group(3, 4, 5)]
        assert scores[winner] == max(scores) == float(found[2])
        written = soundfile.read(tmp_path / "a" / f"x_{index}.wav", dtype="float32")[0]
        assert np.array_equal(written, soundfile.read(tmp_path / "b" / f"x_{index}.wav", dtype="float32")[0])
        expected = playable(candidates[3 * index + winner], 16000)[0]
        torch.testing.assert_close(torch.from_numpy(written), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--text", "rain", "--candidates", "3"], "--candidates needs --clap"),
    (["--image", "x.png", "--candidates", "3", "--clap", "c.pt"],
     "--candidates ranks by the CLAP score against the text; with --image there is no text"),
    (["--text", "rain", "--candidates", "0", "--clap", "c.pt"], "--candidates 0: must be from 1 to 64"),
    (["--text", "rain", "--candidates", "65", "--clap", "c.pt"], "--candidates 65: must be from 1 to 64"),
    (["--text", "rain", "--clap-tokenizer", "bpe"], "--clap-tokenizer needs --clap"),
])
def test_ranking_options_are_usage_errors_before_any_work(models, tmp_path, args, message):
    done = sample(models, *args, "-o", str(tmp_path / "x.wav"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and not any(tmp_path.iterdir())


def test_clap_tta_generates_from_clap_text_embeddings(models, clap_models, tmp_path):
    import clipsonic
    from clipsonic.clap import load_clap

    unet, wide = str(clap_models["unet"]), str(clap_models["wide"])
    done = sample(models, "--checkpoint", unet, "--clap", wide, "--text", "the sound of rain", "--candidates", "2",
                  "--seed", "3", "-o", str(tmp_path / "tta.wav"), "-v")
    assert done.returncode == 0, done.stderr
    assert "variant clap-tta" in done.stderr and "tta.wav: candidate" in done.stderr
    assert soundfile.read(tmp_path / "tta.wav")[0].shape == (16000,)
    pipeline = clipsonic.Pipeline.load(clip=models / "clip.pt", checkpoint=unet, clap=wide)
    assert pipeline.default_variant(None) == "clap-tta"
    torch.testing.assert_close(pipeline.query(text="the sound of rain", variant="clap-tta"),
                               load_clap(wide).embed_text(["the sound of rain"]))
    assert pipeline.generate(text="the sound of rain", steps=2, seconds=0.5, seed=1).shape == (1, 8000)
    missing = sample(models, "--checkpoint", unet, "--text", "rain", "-o", str(tmp_path / "x.wav"))
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1] == (
        "clipsonic: error: variant clap-tta needs the LAION-CLAP model (--clap) whose text embeddings the UNet was "
        "trained on")
    other = sample(models, "--checkpoint", unet, "--clap", str(clap_models["narrow"]), "--text", "rain",
                   "-o", str(tmp_path / "x.wav"))
    assert other.returncode == 1 and "CLAP embeddings are 32-d but the UNet was trained on 64-d ones" in other.stderr
    unused = sample(models, "--clap", wide, "--text", "rain", "-o", str(tmp_path / "y.wav"))
    assert unused.returncode == 0 and "--clap is not used" in unused.stderr


def test_guidance_interval_guides_only_the_steps_inside_it(models):
    """`generate_mel(interval=...)`: the batched guided call at the steps whose noise level lies in
    the interval, one plain conditional call at the others."""
    import dataclasses

    import clipsonic
    from clipsonic.diffusion import GaussianDiffusion

    pipeline = clipsonic.Pipeline.load(clip=models / "clip.pt", checkpoint=models / "unet.pt")
    unet, batches = pipeline.spectrogram.unet, []

    class Counting(torch.nn.Module):
        config = unet.config

        def forward(self, x, t, cond, drop):
            batches.append(x.shape[0])
            return unet(x, t, cond, drop)

    counted = dataclasses.replace(pipeline, spectrogram=dataclasses.replace(pipeline.spectrogram, unet=Counting()))
    query = pipeline.query(text="a photo of rain", variant="zs", seed=0)
    process = GaussianDiffusion.cosine(pipeline.spectrogram.diffusion_steps).respace_log_snr(10)
    sigmas = ((1 - process.alphas_cumprod) / process.alphas_cumprod).sqrt()
    inside = int(((sigmas > 0.3) & (sigmas <= 5.0)).sum())
    counted.generate_mel(query, 2.0, "dpm++", 10, 0.5, seed=1, batch=1, interval=(0.3, 5.0))
    assert 0 < inside < 10 and batches.count(2) == inside and batches.count(1) == 10 - inside
    batches.clear()
    counted.generate_mel(query, 2.0, "dpm++", 10, 0.5, seed=1, batch=1)
    assert batches == [2] * 10
