import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clipsonic.checkpoint import load_checkpoint
from clipsonic.data import Dataset
from clipsonic.diffusion import GaussianDiffusion, classifier_free_guidance
from clipsonic.train.unet import DiffusionTask, DiffusionTrainingConfig
from clipsonic.train.loop import StepContext, Task, TrainConfig, TrainingError, epoch_indices, train
from clipsonic.errors import ParameterError
from clipsonic.unet import UNetConfig, load_unet
from tiny_clap import save_tiny_clap, tiny_clap
from toydata import BANDS, LABELS, class_embedding, make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


SETTINGS = DiffusionTrainingConfig(crop_frames=16, diffusion_steps=1000)


def tiny_task(folder, settings=SETTINGS):
    torch.manual_seed(0)
    return DiffusionTask(Dataset(folder, split="train"), UNetConfig.preset("tiny"), settings)


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "clipsonic", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_epoch_sampler_partitions_each_epoch():
    seen = []
    for step in range(3):  # 3 steps x 2 ranks x 2 items = 12 = one epoch of 12 items
        for rank in range(2):
            seen += epoch_indices(12, 2, step, rank, 2, seed=5)
    assert sorted(seen) == list(range(12))
    assert epoch_indices(12, 2, 3, 0, 2, 5) == epoch_indices(12, 2, 3, 0, 2, 5)
    assert len(epoch_indices(5, 7, 0, 1, 3, 0)) == 7


def test_batches_crop_and_pick_the_nearest_frame(toy):
    task = tiny_task(toy)
    context = StepContext(0, 0, 1, 4, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    x0, cond = task.batch(context)
    assert x0.shape == (4, 1, 16, 16) and cond.shape == (4, 16)
    assert x0.min() >= -1 and x0.max() <= 1
    record = task.records[0]
    # A crop starting at frame 20 is centred at (20 + 8) * 512 / 16000 = 0.896 s: the frame at 0.9 s.
    torch.testing.assert_close(torch.from_numpy(task._condition(record, 20)),
                               torch.from_numpy(task.dataset.image_embeddings(record)[2]))


def state_of(path):
    payload = load_checkpoint(path, "unet")
    return payload["state_dict"], payload["extra"]


def test_resume_is_exact(toy, tmp_path):
    config = TrainConfig(steps=6, batch_size=4, lr=1e-3, ema_decay=0.9, save_every=2, log_every=1, keep=0)
    straight = train(tiny_task(toy), config, tmp_path / "straight", progress=False)

    def crash(step, loss):
        if step == 5:  # after the step-4 checkpoint, before the next one
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        train(tiny_task(toy), config, tmp_path / "resumed", progress=False, on_step=crash)
    assert state_of(tmp_path / "resumed" / "checkpoint.pt")[1]["step"] == 4
    resumed = train(tiny_task(toy), config, tmp_path / "resumed", resume=True, progress=False)
    (ema_a, extra_a), (ema_b, extra_b) = state_of(straight), state_of(resumed)
    assert extra_b["step"] == 6
    for name in ema_a:
        assert torch.equal(ema_a[name], ema_b[name]), name
        assert torch.equal(extra_a["model"][name], extra_b["model"][name]), name
    for a, b in zip(extra_a["optimizer"]["state"].values(), extra_b["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_run_folder_guards(toy, tmp_path):
    config = TrainConfig(steps=1, batch_size=2, save_every=1, keep=0)
    train(tiny_task(toy), config, tmp_path, progress=False)
    with pytest.raises(TrainingError, match="exists: resume it"):
        train(tiny_task(toy), config, tmp_path, progress=False)
    with pytest.raises(TrainingError, match="other loop settings"):
        train(tiny_task(toy), config.replace(lr=5e-4), tmp_path, resume=True, progress=False)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_task(toy), config, tmp_path / "fresh", resume=True, progress=False)


def test_resuming_with_another_model_or_training_setting_names_the_field(toy, tmp_path):
    from clipsonic.train.loop import first_difference, saved_run

    config = TrainConfig(steps=1, batch_size=2, save_every=1, keep=0)
    train(tiny_task(toy), config, tmp_path, progress=False)
    wider = DiffusionTask(Dataset(toy, split="train"), UNetConfig.preset("tiny").replace(model_channels=16), SETTINGS)
    with pytest.raises(TrainingError, match=r"its model settings were model_channels=32, not 16; resume with the "
                                            r"checkpoint's settings"):
        train(wider, config, tmp_path, resume=True, progress=False)
    other = tiny_task(toy, SETTINGS.replace(crop_frames=2 * SETTINGS.crop_frames))
    with pytest.raises(TrainingError, match=rf"its training settings were crop_frames={SETTINGS.crop_frames}, not"):
        train(other, config, tmp_path, resume=True, progress=False)
    saved = saved_run(tmp_path, "unet")  # what a caller builds a resumed task from
    assert UNetConfig.from_dict(saved.config) == UNetConfig.preset("tiny").replace(cond_dim=saved.config["cond_dim"])
    assert saved.training == SETTINGS.to_dict() and saved_run(tmp_path / "none", "unet") is None
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 2}}) == "a.b=1, not 2"
    assert first_difference({"a": (1, 2)}, {"a": [1, 2]}) is None


class ExplodingTask(Task):
    kind, version = "unet", 1

    def __init__(self):
        self.model = torch.nn.Linear(2, 1)

    def loss(self, model, context):
        value = model(torch.ones(1, 2)).sum() ** 2
        return value * float("nan") if context.step >= 3 else value

    def checkpoint_config(self):
        return {}

    def checkpoint_extra(self):
        return {}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(steps=10, batch_size=1, save_every=2, keep=0)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3; .*checkpoint.pt \(step 2\)"):
        train(ExplodingTask(), config, tmp_path, progress=False)
    payload = load_checkpoint(tmp_path / "checkpoint.pt", "unet")
    assert payload["extra"]["step"] == 2
    assert all(torch.isfinite(t).all() for t in payload["state_dict"].values())


TRAIN_ARGS = ["--preset", "tiny", "--batch-size", "4", "--crop-frames", "16", "--no-progress", "--lr", "1e-3"]


def test_sigint_saves_before_exit_and_resume_finishes(toy, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "clipsonic", "train", str(toy), "--out", str(out), *TRAIN_ARGS,
                                "--steps", "100000", "--save-every", "100000", "--log-every", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").is_file() and
                                          len((out / "log.jsonl").read_text().splitlines()) >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by a signal at step" in stderr and "Traceback" not in stderr
    step = load_checkpoint(out / "checkpoint.pt", "unet")["extra"]["step"]
    assert step >= 2
    done = run_cli("train", str(toy), "--out", str(out), *TRAIN_ARGS, "--steps", str(step + 2),
                   "--save-every", "100000", "--log-every", "1", "--resume")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint.pt", "unet")["extra"]["step"] == step + 2


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_weights(toy, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "clipsonic", "train", str(toy), "--out", str(out), *TRAIN_ARGS,
                           "--steps", "3", "--save-every", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    checks = [e for e in events if e.get("event") == "checkpoint"]
    assert [(e["step"], e["identical_ranks"]) for e in checks] == [(2, 2), (3, 2)]
    assert load_checkpoint(out / "checkpoint.pt", "unet")["extra"]["step"] == 3


def test_text_conditioned_baseline(toy, tmp_path):
    done = run_cli("train", str(toy), "--out", str(tmp_path / "tta"), *TRAIN_ARGS, "--steps", "2", "--text-cond",
                   "--prediction", "v")
    assert done.returncode == 0, done.stderr
    payload = load_checkpoint(tmp_path / "tta" / "checkpoint.pt", "unet")
    assert payload["extra"]["condition"] == "text" and payload["extra"]["embed_dim"] == 16
    assert payload["extra"]["prediction"] == "v" and payload["extra"]["training"]["prediction"] == "v"


def test_clap_conditioned_baseline(toy, tmp_path):
    clap_file = save_tiny_clap(tmp_path / "clap")
    done = run_cli("train", str(toy), "--out", str(tmp_path / "clap-tta"), *TRAIN_ARGS, "--steps", "2",
                   "--cond", "clap-text", "--clap", str(clap_file))
    assert done.returncode == 0, done.stderr
    payload = load_checkpoint(tmp_path / "clap-tta" / "checkpoint.pt", "unet")
    # The tiny CLAP's 32-d text embeddings, not the dataset's 16-d CLIP ones.
    assert payload["extra"]["condition"] == "clap-text" and payload["extra"]["embed_dim"] == 32
    assert payload["extra"]["training"]["condition"] == "clap-text" and payload["config"]["cond_dim"] == 32
    model = load_unet(tmp_path / "clap-tta" / "checkpoint.pt")
    assert model.condition == "clap-text" and model.unet.cond_proj.in_features == 32
    resumed = run_cli("train", str(toy), "--out", str(tmp_path / "clap-tta"), *TRAIN_ARGS, "--steps", "3",
                      "--cond", "clap-text", "--clap", str(clap_file), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    other = run_cli("train", str(toy), "--out", str(tmp_path / "clap-tta"), *TRAIN_ARGS, "--steps", "4", "--resume")
    assert other.returncode == 1 and "condition='clap-text', not 'image'" in other.stderr


def test_runs_from_before_the_condition_setting_resume(toy, tmp_path):
    config = TrainConfig(steps=1, batch_size=2, save_every=1, keep=0)
    path = train(tiny_task(toy), config, tmp_path, progress=False)
    for flag, error in ((False, None), (True, "its training settings were condition='text', not 'image'")):
        payload = torch.load(path, weights_only=True)
        training = payload["extra"]["training"]
        del training["condition"], training["prediction"]  # as written before either setting existed
        training["text_cond"] = flag
        torch.save(payload, path)
        if error is None:
            train(tiny_task(toy), config.replace(steps=2), tmp_path, resume=True, progress=False)
            assert state_of(path)[1]["training"]["condition"] == "image"
        else:
            with pytest.raises(TrainingError, match=error):
                train(tiny_task(toy), config.replace(steps=3), tmp_path, resume=True, progress=False)


def test_clap_conditions_are_the_clap_embeddings_of_the_sound_of_each_label(toy):
    from clipsonic.variants import CLAP_TEXT

    clap = tiny_clap()
    task = DiffusionTask(Dataset(toy, split="train"), UNetConfig.preset("tiny"),
                         SETTINGS.replace(condition=CLAP_TEXT), clap=clap)
    assert task.model.config.cond_dim == 32 and task.checkpoint_extra()["embed_dim"] == 32
    for label in LABELS:
        record = next(r for r in task.records if r.label == label)
        torch.testing.assert_close(torch.from_numpy(task._condition(record, 0)),
                                   clap.embed_text([f"the sound of {label}"])[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ParameterError, match=r"needs the LAION-CLAP model \(clap\)"):
        DiffusionTask(Dataset(toy, split="train"), UNetConfig.preset("tiny"), SETTINGS.replace(condition=CLAP_TEXT))
    with pytest.raises(ParameterError, match="condition='clip-text': not one of image, text, clap-text"):
        DiffusionTask(Dataset(toy, split="train"), UNetConfig.preset("tiny"), SETTINGS.replace(condition="clip-text"))


@pytest.mark.parametrize("args, message", [
    (["--cond", "clap-text"], "--cond clap-text needs --clap"),
    (["--clap", "clap.pt"], "--clap is only used with --cond clap-text, not --cond image"),
    (["--text-cond", "--clap", "clap.pt"], "--clap is only used with --cond clap-text, not --cond clip-text"),
    (["--cond", "clap-text", "--clap-tokenizer", "bpe"], "--cond clap-text needs --clap"),
    (["--text-cond", "--cond", "clap-text"], "argument --cond: not allowed with argument --text-cond"),
    (["--cond", "text"], "argument --cond: invalid choice: 'text'"),
])
def test_condition_options_are_usage_errors(toy, tmp_path, args, message):
    done = run_cli("train", str(toy), "--out", str(tmp_path / "run"), *TRAIN_ARGS, "--steps", "1", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_train_errors_are_one_line(tmp_path):
    done = run_cli("train", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"clipsonic: error: {tmp_path}: not a clipsonic dataset (no dataset.json)"


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_tiny_unet_learns_two_classes(toy, tmp_path, prediction):
    task = tiny_task(toy, SETTINGS.replace(prediction=prediction))
    train(task, TrainConfig(steps=400, batch_size=16, lr=2e-3, ema_decay=0.99, save_every=10_000, keep=0),
          tmp_path, progress=False)
    model = load_unet(tmp_path / "checkpoint.pt")
    assert model.prediction == prediction
    dataset = Dataset(toy, split="train")
    class_means = [np.mean([dataset.mel(r, 0, 16) for r in dataset.records if r.label == label], axis=0)
                   for label in LABELS]
    process = GaussianDiffusion.cosine(model.diffusion_steps, model.prediction)
    for index in range(len(LABELS)):
        cond = torch.from_numpy(class_embedding(index, 16))[None].expand(4, -1)
        noise = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            x = process.sample(classifier_free_guidance(model.unet, cond, 2.0), noise, "dpm++", 20)
        for sample in model.mel_norm.from_unit(x[:, 0]).numpy():
            own, other = (np.linalg.norm(sample - class_means[i]) for i in (index, 1 - index))
            assert own < other
            low, high = BANDS[index]
            assert sample[low:high].mean() > sample[BANDS[1 - index][0]:BANDS[1 - index][1]].mean() + 3


def test_checkpoint_metadata_is_written_and_read_through_one_class(toy, tmp_path):
    from clipsonic.prior import PriorCheckpointInfo
    from clipsonic.train.loop import RESUME_STATE, ResumeState
    from clipsonic.unet import UNetCheckpointInfo

    config = TrainConfig(steps=1, batch_size=2, save_every=1, keep=0)
    path = train(tiny_task(toy), config, tmp_path, progress=False)
    extra = load_checkpoint(path, "unet")["extra"]
    info = UNetCheckpointInfo.from_extra(extra)
    assert UNetCheckpointInfo.from_extra(info.to_extra()) == info and info.condition == "image"
    assert info.prediction == "eps" and extra["prediction"] == "eps"
    older = {key: value for key, value in extra.items() if key != "prediction"}  # before v-prediction existed
    assert UNetCheckpointInfo.from_extra(older).prediction == "eps"
    assert set(RESUME_STATE) == {"model", "optimizer", "rng", "adversary", "adversary_optimizer"}
    state = ResumeState.from_extra(extra)
    assert state.adversary is None and set(state.to_extra()) == {"model", "optimizer", "rng"}
    assert PriorCheckpointInfo.from_extra({}).origin == "trained"  # files from before the class: defaults
    assert PriorCheckpointInfo.from_extra({"origin": "laion", "unknown": 1}) == PriorCheckpointInfo("laion")


@pytest.mark.parametrize("command,expected", [
    (["train", "data", "--out", "run"], dict(steps=500_000, batch_size=32, weight_decay=0.0, ema_decay=0.9999)),
    (["train-prior", "data", "--out", "run"], dict(steps=200_000, batch_size=32, weight_decay=0.06)),
    (["train-vocoder", "audio", "--out", "run"], dict(steps=500_000, batch_size=16, weight_decay=0.01, ema_decay=0.0)),
    (["train", "data", "--out", "run", "--ema", "0.5", "--keep", "0", "--bf16", "--lr", "3e-4", "--save-every", "7"],
     dict(ema_decay=0.5, keep=0, bf16=True, lr=3e-4, save_every=7)),
])
def test_loop_options_come_from_train_config(command, expected):
    from clipsonic.cli import build_parser
    from clipsonic.cli.common import COMMON_DEFAULTS
    from clipsonic.cli.train import _loop_config

    args = build_parser().parse_args(command)
    for name, value in COMMON_DEFAULTS.items():
        setattr(args, name, getattr(args, name, value))
    config, _ = _loop_config(args)
    base = TrainConfig(lr=1e-4, grad_clip=1.0, save_every=5000, keep=2, log_every=100, bf16=False)
    assert config == base.replace(**expected)


def test_start_from_begins_a_new_run_with_a_trained_unets_weights(toy, tmp_path):
    """A second phase on longer crops (what --resume refuses): the new run starts from the first
    run's EMA weights, size and normalisation, and records its own crop."""
    first = run_cli("train", str(toy), "--out", str(tmp_path / "short"), *TRAIN_ARGS, "--steps", "2",
                    "--prediction", "v")
    assert first.returncode == 0, first.stderr
    start = tmp_path / "short" / "checkpoint.pt"
    # With a zero learning rate and no averaging, one step leaves the starting weights as they were.
    args = [*TRAIN_ARGS, "--crop-frames", "32", "--lr", "0", "--ema", "0", "--steps", "1", "--prediction", "v",
            "--start-from", str(start)]
    done = run_cli("train", str(toy), "--out", str(tmp_path / "long"), *args, "--preset", "paper")
    assert done.returncode == 0, done.stderr
    (weights, extra), (started, start_extra) = state_of(tmp_path / "long" / "checkpoint.pt"), state_of(start)
    assert extra["training"]["crop_frames"] == 32 and extra["mel_norm"] == start_extra["mel_norm"]
    assert weights.keys() == started.keys() and all(torch.equal(weights[k], started[k]) for k in weights)
    other = run_cli("train", str(toy), "--out", str(tmp_path / "eps"), *args[:-4], "--start-from", str(start))
    assert other.returncode == 1 and other.stderr.strip() == (
        f"clipsonic: error: {start}: its UNet has prediction='v', not 'eps'; it cannot start this training")
    both = run_cli("train", str(toy), "--out", str(tmp_path / "long"), *args, "--resume")
    assert both.returncode == 2 and "--start-from begins a new run" in both.stderr
