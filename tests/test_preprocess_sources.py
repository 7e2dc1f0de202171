"""What `preprocess` does with labels files, several video folders, files it cannot use, and wrong --out."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsonic import cli
from clipsonic.data import Dataset
from clipsonic.errors import ClipsonicError, ParameterError
from clipsonic.eval.evaluate import real_audio
from clipsonic.data.labels import read_labels
from clipsonic.media import decode_audio
from clipsonic.data.preprocess import PreprocessConfig, preprocess, read_skipped
from clipsonic.train.vocoder import find_audio
from conftest import make_video

SETTINGS = PreprocessConfig(shard_clips=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two video folders with a file name in common, and the files of the first that are not videos."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for name, seconds in (("a.mp4", 2.2), ("b.mp4", 2.4), ("c.mp4", 2.6)):
        make_video(first / name, seconds=seconds)
    make_video(second / "a.mp4", seconds=3.0)  # the same name as first/a.mp4, another clip
    make_video(second / "d.mp4", seconds=2.3)
    return first, second


def _labels(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _cli(*words) -> list[str]:
    return ["preprocess", *map(str, words), "--workers", "0", "--no-progress"]


def test_labels_naming_some_videos_say_which_are_missing(folders, clip_model, tmp_path, caplog):
    first, _ = folders
    labels = read_labels(_labels(tmp_path / "labels.csv", "file,label\na.mp4,rain\nzzz.mp4,bell\n"))
    with caplog.at_level(logging.WARNING, logger="clipsonic"):
        summary = preprocess(first, tmp_path / "out", clip_model, labels=labels, settings=SETTINGS)
    assert (summary.labels.matched, summary.labels.videos) == (1, 3)
    assert summary.labels.unmatched == ("b.mp4", "c.mp4")
    assert "labels.csv names 1 of the 3 videos; not named: b.mp4, c.mp4" in caplog.text


def test_labels_naming_no_video_stop_the_run_unless_allowed(folders, clip_model, clip_file, tmp_path, capsys):
    first, _ = folders
    path = _labels(tmp_path / "wrong.csv", "file,label\nx.mp4,rain\ny.mp4,bell\n")
    with pytest.raises(ParameterError, match=r"names 0 of the 3 videos.*allow_unlabelled=True") as caught:
        preprocess(first, tmp_path / "out", clip_model, labels=read_labels(path), settings=SETTINGS)
    assert caught.value.parameter == "allow_unlabelled"
    assert not (tmp_path / "out").exists()
    assert cli.main(_cli(first, "--out", tmp_path / "out", "--clip", clip_file, "--labels", path)) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--allow-unlabelled goes on without labels" in error
    assert not (tmp_path / "out").exists()
    assert cli.main(_cli(first, "--out", tmp_path / "out", "--clip", clip_file, "--labels", path,
                         "--allow-unlabelled")) == 0
    assert "labels: " in capsys.readouterr().out
    assert all(record.label is None for record in Dataset(tmp_path / "out").records)


def test_a_new_labels_file_relabels_the_clips_already_there(folders, clip_model, tmp_path):
    first, _ = folders
    out = tmp_path / "out"
    old = read_labels(_labels(tmp_path / "old.csv", "file,label,split\na.mp4,rain,train\nb.mp4,rian,train\n"))
    preprocess(first, out, clip_model, labels=old, settings=SETTINGS)
    shards = {path.name: path.read_bytes() for path in (out / "shards").iterdir()}
    assert Dataset(out).labels()["labels"].tolist() == ["rain", "rian"]
    new_path = _labels(tmp_path / "new.csv", "file,label,split\na.mp4,rain,test\nb.mp4,rain,\nc.mp4,bell,train\n")
    summary = preprocess(first, out, clip_model, labels=read_labels(new_path), settings=SETTINGS)
    assert (summary.added, summary.relabelled) == (0, 3)  # a: split, b: label, c: had none
    dataset = Dataset(out)
    by_id = {record.id: record for record in dataset.records}
    assert (by_id["a.mp4"].label, by_id["a.mp4"].split) == ("rain", "test")
    assert (by_id["b.mp4"].label, by_id["b.mp4"].split) == ("rain", "train")  # no split given: the old one stays
    assert by_id["c.mp4"].label == "bell"
    assert dataset.labels()["labels"].tolist() == ["bell", "rain"]  # the label texts encoded again
    assert {path.name: path.read_bytes() for path in (out / "shards").iterdir()} == shards  # nothing else redone
    runs = json.loads((out / "dataset.json").read_text())["runs"]
    assert [run["labels"] for run in runs] == [str((tmp_path / "old.csv").resolve()), str(new_path.resolve())]
    assert runs[1]["relabelled"] == 3 and runs[1]["labelled"] == 3
    assert len(runs[1]["labels_sha256"]) == 64


def test_another_folder_needs_add_source_and_every_clip_keeps_its_audio(folders, clip_model, clip_file, tmp_path,
                                                                        capsys):
    first, second = folders
    out = tmp_path / "out"
    preprocess(first, out, clip_model, settings=SETTINGS)
    before = (out / "clips.jsonl").read_bytes()
    with pytest.raises(ParameterError, match=f"holds clips of {first.resolve()}, not of {second.resolve()}"):
        preprocess(second, out, clip_model, settings=SETTINGS)
    assert cli.main(_cli(second, "--out", out, "--clip", clip_file)) == 1
    assert "or --add-source to add its videos" in capsys.readouterr().err
    assert (out / "clips.jsonl").read_bytes() == before
    summary = preprocess(second, out, clip_model, settings=SETTINGS, add_source=True)
    assert summary.added == 2
    dataset = Dataset(out)
    assert dataset.sources == [first.resolve(), second.resolve()]
    assert sorted(record.id for record in dataset.records) == ["1:a.mp4", "1:d.mp4", "a.mp4", "b.mp4", "c.mp4"]
    by_id = {record.id: record for record in dataset.records}
    assert dataset.source_path(by_id["a.mp4"]) == first.resolve() / "a.mp4"
    assert dataset.source_path(by_id["1:a.mp4"]) == second.resolve() / "a.mp4"
    assert abs(by_id["1:a.mp4"].duration - 3.0) < 0.1  # the second folder's clip, not the first's
    np.testing.assert_array_equal(real_audio(dataset, by_id["1:a.mp4"], 16000),
                                  decode_audio(second / "a.mp4", 16000))
    train = {dataset.source_path(record) for record in dataset.records if record.split == "train"}
    assert set(find_audio(out)) == train
    again = preprocess(second, out, clip_model, settings=SETTINGS)  # a recorded folder needs no flag again
    assert (again.added, again.already_done) == (0, 2)


def test_unusable_files_are_listed_and_others_left_alone(folders, clip_model, tmp_path):
    first, _ = folders
    videos = tmp_path / "videos"
    shutil.copytree(first, videos)
    make_video(videos / "sound.m4a", seconds=2.5)  # audio-only by its suffix, whatever is in it
    os.symlink(tmp_path / "gone.mp4", videos / "link.mp4")
    (videos / "notes.txt").write_text("not a video")
    summary = preprocess(videos, tmp_path / "out", clip_model, settings=SETTINGS)
    assert (summary.added, summary.unusable, summary.ignored) == (3, 2, 1)
    skipped = read_skipped(tmp_path / "out" / "skipped.csv")
    assert skipped == {"link.mp4": f"broken symbolic link (to {tmp_path / 'gone.mp4'})",
                       "sound.m4a": "audio-only file: no pictures to embed (train-vocoder can use it)"}


def test_a_wrong_out_is_one_line_and_leaves_nothing(folders, clip_file, tmp_path, capsys):
    first, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("mine")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("mine")
    cases = {tmp_path / "file": "exists and is not a folder",
             tmp_path / "file" / "out": "cannot be created",
             tmp_path / "home": "holds other files (thesis.tex) and no clipsonic dataset"}
    for out, message in cases.items():
        assert cli.main(_cli(first, "--out", out, "--clip", clip_file)) == 1, out
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"{out}: {message}" in error, error
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(path.name for path in (tmp_path / "home").iterdir()) == ["thesis.tex"]
    assert cli.main(_cli(empty, "--out", tmp_path / "new", "--clip", clip_file)) == 1
    assert "no video files" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_in_a_new_folder_removes_it(folders, clip_model, tmp_path, monkeypatch):
    import clipsonic.data.preprocess as module

    def fail(*args, **kwargs):
        raise ClipsonicError("the CLIP forward pass failed")

    monkeypatch.setattr(module, "encode_frames", fail)
    with pytest.raises(ClipsonicError, match="forward pass"):
        preprocess(folders[0], tmp_path / "out", clip_model, settings=SETTINGS)
    assert not (tmp_path / "out").exists()
