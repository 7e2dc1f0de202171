"""`torchrun -m clipsonic preprocess`: ranks share the videos, each writes its own part, rank 0 merges once."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clipsonic.audio import MelConfig
from clipsonic.data import Dataset, DatasetWriter
from clipsonic.data.preprocess import RANKS_FOLDER, read_skipped
from conftest import make_video
from test_preprocess import _descendants, _process_table, assert_same_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """12 labelled videos and one that cannot be read."""
    folder = tmp_path_factory.mktemp("videos")
    rows = ["file,label"]
    for index in range(12):
        make_video(folder / f"v{index:02d}.mp4", seconds=2.1 + 0.1 * index)
        rows.append(f"v{index:02d}.mp4,{('rain', 'bell', 'wind')[index % 3]}")
    (folder / "broken.mp4").write_bytes(b"\0" * 300)
    labels = tmp_path_factory.mktemp("labels") / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return folder, labels


def _command(videos, clip_file, out, ranks: int | None) -> list[str]:
    folder, labels = videos
    launcher = [] if ranks is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    return [sys.executable, *launcher, "-m", "clipsonic", "preprocess", str(folder), "--out", str(out), "--clip",
            str(clip_file), "--labels", str(labels), "--workers", "0", "--shard-clips", "1", "--keep-frames",
            "--no-progress"]


@pytest.fixture(scope="module")
def reference(videos, clip_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "data"
    subprocess.run(_command(videos, clip_file, out, None), check=True, capture_output=True)
    return out


def _assert_same(merged, reference, ordered: bool = True) -> None:
    a, b = Dataset(merged), Dataset(reference)
    assert_same_dataset(a, b)
    if ordered:  # listed in the same order too (a resumed run lists what the killed one finished first)
        assert [record.id for record in a.records] == [record.id for record in b.records]
    for record in a.records:
        np.testing.assert_array_equal(a.frames(record), b.frames(record))
    for name in ("labels", "text_embeddings", "token_encodings"):
        np.testing.assert_array_equal(a.labels()[name], b.labels()[name])
    assert read_skipped(merged / "skipped.csv") == read_skipped(reference / "skipped.csv")
    assert not (merged / RANKS_FOLDER).exists()


def test_two_ranks_make_the_dataset_one_process_makes(videos, clip_file, reference, tmp_path):
    done = subprocess.run(_command(videos, clip_file, tmp_path / "data", 2), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "12 clip(s) added, 0 already there, 1 skipped" in done.stdout and "on 2 ranks" in done.stdout
    assert done.stdout.count("clip(s) added") == 1  # rank 0 reports for all
    _assert_same(tmp_path / "data", reference)
    info = Dataset(tmp_path / "data").info
    assert info["runs"][-1]["ranks"] == 2 and info["runs"][-1]["added"] == 12


def _part_lines(out) -> int:
    return sum(path.read_text().count("\n") for path in (out / RANKS_FOLDER).glob("rank-*/clips.jsonl"))


def _wait_gone(processes: dict[int, str], seconds: float = 30) -> bool:
    """True once none of `processes` (pid -> start time) is alive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        table = _process_table()
        if not any(pid in table and table[pid][2] == start and table[pid][1] not in "ZX"
                   for pid, start in processes.items()):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_multi_rank_run_resumes(videos, clip_file, reference, tmp_path):
    out = tmp_path / "data"
    process = subprocess.Popen(_command(videos, clip_file, out, 2), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _part_lines(out) < 3 and process.poll() is None:
        time.sleep(0.05)
    ranks = _descendants(process.pid)  # torchrun starts its ranks in sessions of their own
    for pid in [process.pid, *ranks]:  # torchrun and both ranks, at once
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert ranks and _wait_gone(ranks)
    finished = _part_lines(out)
    assert 3 <= finished < 12, finished
    assert not (out / "clips.jsonl").is_file()  # nothing merged yet: the parts hold the work
    done = subprocess.run(_command(videos, clip_file, out, 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"merged {finished} clip(s) an interrupted multi-rank run had finished" in done.stderr
    assert f"{12 - finished} clip(s) added, {finished} already there" in done.stdout
    _assert_same(out, reference, ordered=False)


def test_a_merge_killed_before_its_commit_changes_nothing(tmp_path, monkeypatch):
    import clipsonic.data as data

    rng = np.random.default_rng(0)

    def part(name, ids):
        with DatasetWriter(tmp_path / name, MelConfig(), 4, shard_clips=1) as writer:
            for clip_id in ids:
                writer.add(clip_id, clip_id, rng.standard_normal((64, 5)), rng.standard_normal((3, 4)),
                           (0.5, 1.0, 1.5), None, "train", 2.0)
        return tmp_path / name

    parts = [part("p0", ["a", "c"]), part("p1", ["b"])]
    out = tmp_path / "out"
    with DatasetWriter(out, MelConfig(), 4) as writer:
        monkeypatch.setattr(data, "write_records", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            writer.absorb(parts)
    assert Dataset(out).records == [] and len(list((out / "shards").iterdir())) == 6  # linked, not listed
    monkeypatch.undo()
    with DatasetWriter(out, MelConfig(), 4) as writer:
        assert list((out / "shards").iterdir()) == []  # the next writer removes the unlisted shard files
        assert writer.absorb(parts, order=lambda record: record.id) == 3
    merged = Dataset(out)
    assert [record.id for record in merged.records] == ["a", "b", "c"]
    for name in ("p0", "p1"):
        source = Dataset(tmp_path / name)
        for record in source.records:
            other = next(r for r in merged.records if r.id == record.id)
            np.testing.assert_array_equal(merged.mel(other), source.mel(record))
            np.testing.assert_array_equal(merged.image_embeddings(other), source.image_embeddings(record))
