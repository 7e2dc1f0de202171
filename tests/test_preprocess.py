"""`clipsonic preprocess` on lavfi-made videos: records, skip reasons, resume, label formats, and train on the result."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsonic import cli, media
from clipsonic.audio import MelConfig, mel_spectrogram
from clipsonic.clip import CLIP, CLIPConfig, preprocess_image
from clipsonic.data import Dataset
from clipsonic.errors import ClipsonicError
from clipsonic.data.preprocess import PreprocessConfig, frame_times, preprocess, read_skipped
from conftest import make_video

USABLE = ("clip.mp4", "odd_rate.mp4", "stereo44k.mov", "nested/clip.mkv", "clip.webm")
SKIPPED = {"silent.mp4": "no audio stream", "short.mp4": "shorter than 2.05 s (1.00 s)",
           "truncated.mp4": "unreadable or corrupt media", "garbage.mkv": "unreadable or corrupt media"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "clip.mp4", seconds=3.0)
    make_video(folder / "odd_rate.mp4", seconds=4.2, fps="30000/1001", size="80x60")
    make_video(folder / "stereo44k.mov", seconds=2.5, sample_rate=44100, channels=2, size="48x64")
    (folder / "nested").mkdir()
    make_video(folder / "nested" / "clip.mkv", seconds=2.2, fps=7)
    make_video(folder / "clip.webm", seconds=2.6, fps=12, video_codec="libvpx", audio_codec="libopus",
               sample_rate=48000)
    make_video(folder / "silent.mp4", seconds=3.0, audio=False)
    make_video(folder / "short.mp4", seconds=1.0)
    whole = make_video(folder / "whole.mp4", seconds=3.0).read_bytes()
    (folder / "whole.mp4").unlink()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: cut off
    (folder / "garbage.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not a video")
    (folder / ".partial.mp4").write_bytes(b"")  # hidden: a download in progress
    return folder


@pytest.fixture(scope="module")
def dataset_folder(videos, clip_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "dataset"
    labels = videos.parent / "labels.csv"
    labels.write_text("file,label,split\nclip.mp4,rain,train\nodd_rate.mp4,bell,test\nnested/clip.mkv,rain,\n")
    from clipsonic.data.labels import read_labels

    summary = preprocess(videos, out, clip_model, labels=read_labels(labels),
                         settings=PreprocessConfig(keep_frames=True, shard_clips=2), workers=0)
    assert (summary.added, summary.skipped, summary.already_done) == (len(USABLE), len(SKIPPED), 0)
    return out


def test_records_of_every_usable_video(dataset_folder, videos):
    dataset = Dataset(dataset_folder)
    by_id = {record.id: record for record in dataset.records}
    assert sorted(by_id) == sorted(USABLE)
    expected_seconds = {"clip.mp4": 3.0, "odd_rate.mp4": 4.2, "stereo44k.mov": 2.5, "nested/clip.mkv": 2.2,
                        "clip.webm": 2.6}
    for source, seconds in expected_seconds.items():
        record = by_id[source]
        assert record.source == source
        assert abs(record.duration - seconds) < 0.15, (source, record.duration)  # codec padding
        assert record.mel_frames == int(record.duration * 16000) // 512
        assert record.frame_times == frame_times(record.duration, PreprocessConfig())
        assert record.frame_count == max(3, round(record.duration))
        assert dataset.image_embeddings(record).shape == (record.frame_count, 64)
    assert (by_id["clip.mp4"].label, by_id["clip.mp4"].split) == ("rain", "train")
    assert (by_id["odd_rate.mp4"].label, by_id["odd_rate.mp4"].split) == ("bell", "test")
    assert by_id["nested/clip.mkv"].label == "rain"  # split drawn at random (seeded)
    assert by_id["clip.webm"].label is None
    info = json.loads((dataset_folder / "dataset.json").read_text())
    assert info["source_root"] == str(videos.resolve())
    assert info["clip"]["checkpoint"] is None and info["clip"]["config"]["embed_dim"] == 64


def test_skip_reasons(dataset_folder):
    skipped = read_skipped(dataset_folder / "skipped.csv")
    assert sorted(skipped) == sorted(SKIPPED)
    for source, reason in SKIPPED.items():
        assert skipped[source].startswith(reason), (source, skipped[source])


def test_stored_arrays_are_what_the_models_compute(dataset_folder, videos, clip_model):
    dataset = Dataset(dataset_folder)
    record = next(r for r in dataset.records if r.id == "stereo44k.mov")
    wav = media.decode_audio(videos / record.source, 16000)
    expected_mel = mel_spectrogram(torch.from_numpy(wav), MelConfig()).numpy()
    np.testing.assert_allclose(dataset.mel(record), expected_mel, atol=2e-2, rtol=2e-3)  # stored as float16
    frames = media.read_frames(videos / record.source, record.frame_times)
    pixels = torch.stack([preprocess_image(frame, 32) for frame in frames])
    with torch.no_grad():
        expected = clip_model.encode_image(pixels).numpy()
    np.testing.assert_allclose(dataset.image_embeddings(record), expected, atol=5e-3, rtol=5e-3)
    kept = dataset.frames(record)
    assert kept.shape == (record.frame_count, 32, 32, 3) and kept.dtype == np.uint8
    from clipsonic.clip import normalize_pixels

    torch.testing.assert_close(normalize_pixels(torch.from_numpy(kept)), pixels)


def test_label_texts_are_encoded_once(dataset_folder, clip_model):
    from clipsonic.prior import text_condition
    from clipsonic.tokenizer import tokenize

    labels = Dataset(dataset_folder).labels()
    assert labels["labels"].tolist() == ["bell", "rain"]
    with torch.no_grad():
        embedding, encodings = text_condition(clip_model, tokenize(["a photo of bell", "a photo of rain"]))
    np.testing.assert_allclose(labels["text_embeddings"], embedding.numpy(), atol=1e-6)
    np.testing.assert_allclose(labels["token_encodings"], encodings.numpy(), atol=2e-2, rtol=2e-3)


def test_rerun_does_nothing_and_retry_retries(dataset_folder, videos, clip_model):
    before = (dataset_folder / "clips.jsonl").read_bytes()
    summary = preprocess(videos, dataset_folder, clip_model, workers=0)
    assert (summary.added, summary.already_done, summary.skipped, summary.skipped_before) == \
        (0, len(USABLE), 0, len(SKIPPED))
    assert (dataset_folder / "clips.jsonl").read_bytes() == before


def test_workers_give_the_same_dataset(videos, clip_model, tmp_path, dataset_folder):
    summary = preprocess(videos, tmp_path / "parallel", clip_model, settings=PreprocessConfig(shard_clips=3),
                         workers=2)
    assert summary.added == len(USABLE)
    assert_same_dataset(Dataset(tmp_path / "parallel"), Dataset(dataset_folder), labels=False)


def assert_same_dataset(a: Dataset, b: Dataset, labels: bool = True) -> None:
    records_a = {r.id: r for r in a.records}
    records_b = {r.id: r for r in b.records}
    assert sorted(records_a) == sorted(records_b)
    for clip_id, record in records_a.items():
        other = records_b[clip_id]
        fields = ("source", "duration", "mel_frames", "frame_times") + (("label", "split") if labels else ())
        assert all(getattr(record, f) == getattr(other, f) for f in fields), clip_id
        np.testing.assert_array_equal(a.mel(record), b.mel(other))
        np.testing.assert_allclose(a.image_embeddings(record), b.image_embeddings(other), atol=2e-3)


def test_a_different_clip_is_refused_on_resume(dataset_folder, videos):
    other = CLIP(CLIPConfig.preset("tiny").replace(vision_layers=1)).eval()
    with pytest.raises(ClipsonicError, match="another CLIP"):
        preprocess(videos, dataset_folder, other, workers=0)


def test_bad_arguments(tmp_path, clip_model):
    with pytest.raises(ClipsonicError, match="not a folder"):
        preprocess(tmp_path / "none", tmp_path / "out", clip_model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipsonicError, match="no video files"):
        preprocess(tmp_path / "empty", tmp_path / "out", clip_model)
    with pytest.raises(ClipsonicError, match="split ratio"):
        PreprocessConfig(split_ratio=0)


def test_cli_errors_are_one_line(tmp_path, clip_file, capsys):
    assert cli.main(["preprocess", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--clip", str(clip_file)]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0
    labels = tmp_path / "bad.csv"
    labels.write_text("what,ever\n")
    (tmp_path / "v").mkdir()
    assert cli.main(["preprocess", str(tmp_path / "v"), "--out", str(tmp_path / "o"), "--clip", str(clip_file),
                     "--labels", str(labels)]) == 1
    assert "bad.csv: unrecognised labels format" in capsys.readouterr().err


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory, clip_file):
    """16 short videos (enough that a kill or a second run lands mid-run even when clips go fast), the
    command that preprocesses them one clip per shard, and the dataset an uninterrupted run makes."""
    source = tmp_path_factory.mktemp("many")
    for index in range(16):
        make_video(source / f"v{index}.mp4", seconds=2.1 + 0.05 * index)
    command = [sys.executable, "-m", "clipsonic", "preprocess", str(source), "--clip", str(clip_file),
               "--workers", "0", "--shard-clips", "1", "--no-progress"]
    reference = tmp_path_factory.mktemp("many-data") / "reference"
    subprocess.run(command + ["--out", str(reference)], check=True, capture_output=True)
    return source, command, reference


def _lines(path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_dataset(tmp_path, many_videos):
    source, command, reference = many_videos
    videos = len(list(source.iterdir()))
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(command + ["--out", str(resumed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = resumed / "clips.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _lines(records) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = records.read_text().count("\n")
    assert 2 <= done < videos
    assert (resumed / ".lock").read_text().split()[0] == str(process.pid)  # left by the dead run: must not block
    with open(records, "a") as handle:
        handle.write('{"id": "v15.mp4", "sou')  # as if killed while appending: a cut last line
    rerun = subprocess.run(command + ["--out", str(resumed)], check=True, capture_output=True, text=True)
    assert f"{videos - done} clip(s) added, {done} already there" in rerun.stdout
    assert_same_dataset(Dataset(resumed), Dataset(reference))
    shards = {int(path.stem.split("-")[1]) for path in (resumed / "shards").glob("*.npy")}
    assert shards == {record.shard for record in Dataset(resumed).records}  # a killed flush's shard is gone
    assert not [path for path in resumed.rglob("*") if ".tmp" in path.name]


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_stops_at_once(tmp_path, many_videos, clip_file, capsys):
    source, command, reference = many_videos
    out = tmp_path / "out"
    first = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _lines(out / "clips.jsonl") < 1:
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()
        second = cli.main(["preprocess", str(source), "--out", str(out), "--clip", str(clip_file), "--workers", "0",
                           "--shard-clips", "1", "--no-progress"])
        overlapped = first.poll() is None
        err = capsys.readouterr().err
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert overlapped, "the first run ended before the second one started: make it longer"
    assert second == 1 and err.count("\n") == 1, err
    assert err.startswith(f"clipsonic: error: {out}: is being written by process {first.pid} (started "), err
    assert "16 clip(s) added, 0 already there" in stdout
    dataset = Dataset(out)
    assert len(dataset) == len({record.id for record in dataset.records}) == 16
    assert_same_dataset(dataset, Dataset(reference))


def test_a_run_into_a_locked_folder_touches_nothing(tmp_path, dataset_folder, videos, clip_file, capsys):
    import fcntl

    out = tmp_path / "copy"
    shutil.copytree(dataset_folder, out)

    def state():
        return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(out.rglob("*")) if path.is_file()}

    with open(out / ".lock", "w") as held:  # as another run holds it (a second open file: flock refuses this one too)
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242 2026-12-01 10:00:00\n")
        held.flush()
        before = state()
        started = time.monotonic()
        assert cli.main(["preprocess", str(videos), "--out", str(out), "--clip", str(clip_file), "--workers", "2",
                         "--retry-skipped"]) == 1
        assert time.monotonic() - started < 5
        assert state() == before
    assert capsys.readouterr().err == (f"clipsonic: error: {out}: is being written by process 4242 (started "
                                       f"2026-12-01 10:00:00); wait for it to finish or use another output folder\n")


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (command)"
            except OSError:
                continue  # gone meanwhile
            table[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every living process below `pid`."""
    table = _process_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state, start) in table.items():
            if ppid == parent and child not in found and state not in "ZX":
                found[child] = start
                frontier.append(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_killed_run_leaves_no_processes_behind(tmp_path, many_videos):
    source, command, _ = many_videos
    command = list(command)
    command[command.index("--workers") + 1] = "2"
    process = subprocess.Popen(command + ["--batch", "3", "--out", str(tmp_path / "out")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: dict[int, str] = {}

    def alive() -> list[int]:  # a pid counts only while it is the same process, not a zombie
        table = _process_table()
        return sorted(pid for pid, start in children.items()
                      if pid in table and table[pid][2] == start and table[pid][1] not in "ZX")

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _lines(tmp_path / "out" / "clips.jsonl") < 1:  # workers are decoding
            time.sleep(0.02)
        children = _descendants(process.pid)
        commands = {pid: _command_line(pid) for pid in children}
        assert process.poll() is None, "the run finished before the kill: give it more videos"
        process.kill()
        process.wait()
        # the 2 decoding workers (a worker's child between fork and exec of ffmpeg shows the same command)
        assert sum("spawn_main" in text for text in commands.values()) >= 2, commands
        assert any("resource_tracker" in text for text in commands.values()), commands
        deadline = time.monotonic() + 5
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(), {pid: commands[pid] for pid in alive()}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in alive():  # what a failure left behind: processes this test started, by pid
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_saves_finished_clips(tmp_path, clip_file):
    source = tmp_path / "videos"
    source.mkdir()
    for index in range(6):
        make_video(source / f"v{index}.mp4", seconds=2.1)
    command = [sys.executable, "-m", "clipsonic", "preprocess", str(source), "--clip", str(clip_file),
               "--workers", "1", "--batch", "3", "--no-progress", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "out" / "dataset.json").is_file():
        time.sleep(0.05)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130 and "run the same command again" in err
    assert not list((tmp_path / "out").rglob("*.tmp*"))
    rerun = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "0 skipped" in rerun.stdout
    assert len(Dataset(tmp_path / "out")) == 6


@pytest.mark.slow
def test_train_reads_what_preprocess_writes(tmp_path, clip_file):
    """End to end through the CLI: videos -> preprocess -> train (tiny, a few steps) -> a checkpoint."""
    source = tmp_path / "videos"
    source.mkdir()
    for index, tone in enumerate((300, 600, 900, 1200)):
        subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
                        "-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=16000", "-t", "2.5",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(source / f"t{index}.mp4")],
                       check=True)
    (tmp_path / "labels.csv").write_text("file,label\nt0.mp4,low\nt1.mp4,low\nt2.mp4,high\nt3.mp4,high\n")
    assert cli.main(["preprocess", str(source), "--out", str(tmp_path / "data"), "--clip", str(clip_file),
                     "--labels", str(tmp_path / "labels.csv"), "--split-ratio", "1", "--workers", "0",
                     "--no-progress"]) == 0
    assert cli.main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
                     "--steps", "3", "--batch-size", "2", "--crop-frames", "64", "--save-every", "3",
                     "--no-progress", "--seed", "0"]) == 0
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["extra"]["embed_dim"] == 64 and saved["extra"]["clip"]["config"]["embed_dim"] == 64
    assert cli.main(["train-prior", str(tmp_path / "data"), "--out", str(tmp_path / "prior"), "--preset", "tiny",
                     "--steps", "2", "--batch-size", "2", "--save-every", "2", "--no-progress"]) == 0


def test_frame_times_spread_over_the_clip():
    assert frame_times(2.1, PreprocessConfig()) == pytest.approx((0.35, 1.05, 1.75))
    assert len(frame_times(10.0, PreprocessConfig())) == 10
    assert frame_times(4.0, PreprocessConfig(frames_per_second=0.5, min_frames=1)) == (1.0, 3.0)


def test_no_temporary_files_left(dataset_folder):
    assert not [p for p in dataset_folder.rglob("*") if ".tmp" in p.name]
    assert os.path.isfile(dataset_folder / "frames" / "nested" / "clip.mkv.npy")
