"""One writer per dataset folder, and a reader that refuses records whose data is not where they say.

`preprocess` end to end (two runs at once, kill -9 and resume, orphaned workers) is in
test_preprocess.py; these build datasets with `DatasetWriter` directly, in milliseconds.
"""

import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clipsonic.audio import MelConfig
from clipsonic.data import Dataset, DatasetWriter
from clipsonic.errors import ClipsonicError

MELS, DIM = 8, 4


def _write(folder, clips=6, shard_clips=3, start=0):
    """A dataset of `clips` clips (ids c<i>, 5 + i mel frames, 2 frames each) in shards of `shard_clips`."""
    with DatasetWriter(folder, MelConfig(n_mels=MELS), DIM, shard_clips=shard_clips) as writer:
        for index in range(start, start + clips):
            mel = np.full((MELS, 5 + index), index, np.float32)
            writer.add(f"c{index}", f"c{index}.mp4", mel, np.full((2, DIM), index, np.float32), [0.5, 1.5], None,
                       "train", 2.0)
    return folder


def _edit(folder, change):
    """Rewrite clips.jsonl as `change(records as dicts)` returns it."""
    path = folder / "clips.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(record) + "\n" for record in change(records)))


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    folder = tmp_path / "data"
    first = DatasetWriter(folder, MelConfig(n_mels=MELS), DIM)
    holder = (folder / ".lock").read_text().split()
    assert holder[0] == str(os.getpid()) and len(holder) == 3  # pid, date, time
    with pytest.raises(ClipsonicError) as raised:
        DatasetWriter(folder, MelConfig(n_mels=MELS), DIM)  # another open file: flock says no, even in one process
    message = str(raised.value)
    assert message.startswith(f"{folder}: is being written by process {os.getpid()} (started {holder[1]} {holder[2]})")
    assert "\n" not in message
    first.close()
    assert (folder / ".lock").read_text() == ""  # released: it names nobody
    DatasetWriter(folder, MelConfig(n_mels=MELS), DIM).close()


def test_a_lock_held_by_another_process_blocks_and_a_dead_ones_does_not(tmp_path):
    folder = tmp_path / "data"
    _write(folder)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from clipsonic.audio import MelConfig; "
                               "from clipsonic.data import DatasetWriter; "
                               f"w = DatasetWriter({str(folder)!r}, MelConfig(n_mels={MELS}), {DIM}); "
                               "print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        with pytest.raises(ClipsonicError, match=f"being written by process {holder.pid} "):
            DatasetWriter(folder, MelConfig(n_mels=MELS), DIM)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the kernel drops its flock
        holder.wait()
    assert (folder / ".lock").read_text().split()[0] == str(holder.pid)  # the stale lock file is still there
    with DatasetWriter(folder, MelConfig(n_mels=MELS), DIM) as writer:
        assert (folder / ".lock").read_text().split()[0] == str(os.getpid()) and len(writer.done) == 6


def test_held_by_hand_an_unknown_process_is_still_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ClipsonicError, match="being written by an unknown process;"):
            DatasetWriter(folder, MelConfig(n_mels=MELS), DIM)
    assert sorted(path.name for path in folder.iterdir()) == [".lock"]  # nothing was written


def test_shard_numbers_are_never_reused_and_leftovers_go(tmp_path):
    folder = _write(tmp_path / "data")  # shards 0 and 1
    shards = folder / "shards"
    # what a writer killed between writing a shard and listing its records leaves, and a half-written file
    np.save(shards / "mel-00002.npy", np.zeros((MELS, 3), np.float16))
    np.save(shards / "emb-00002.npy", np.zeros((1, DIM), np.float16))
    (shards / ".mel-00003.npy.x1y2.tmp.npy").write_bytes(b"\x93NUMPY")
    (folder / ".skipped.csv.abcd.tmp.csv").write_text("file,rea")
    _write(folder, clips=2, start=6)
    assert sorted(path.name for path in shards.iterdir()) == \
        ["emb-00000.npy", "emb-00001.npy", "emb-00003.npy", "mel-00000.npy", "mel-00001.npy", "mel-00003.npy"]
    assert not list(folder.glob(".*.tmp*"))
    dataset = Dataset(folder)
    assert [(r.id, r.shard) for r in dataset.records[-2:]] == [("c6", 3), ("c7", 3)]
    for record in dataset.records:
        index = int(record.id[1:])
        assert dataset.mel(record).shape == (MELS, 5 + index) and (dataset.mel(record) == index).all()
        assert (dataset.image_embeddings(record) == index).all()


def test_a_record_past_its_shards_end_is_refused_by_name(tmp_path):
    folder = _write(tmp_path / "data")  # shard 1: c3, c4, c5 with 8, 9 and 10 frames
    Dataset(folder)  # intact

    def past_the_end(records):
        records[5]["mel_offset"] += 3  # today: read back 7 frames instead of 10, no error
        return records

    _edit(folder, past_the_end)
    with pytest.raises(ClipsonicError) as raised:
        Dataset(folder)
    assert str(raised.value) == (f"{folder}: clip 'c5' claims mel frames 20:30 of shards/mel-00001.npy, which has 27; "
                                 f"the dataset is damaged (preprocess its videos again into a new folder)")


def test_ranges_past_the_end_overlapping_duplicated_or_missing_are_refused(tmp_path):
    folder = _write(tmp_path / "data")
    original = (folder / "clips.jsonl").read_text()

    def refused(change, *expected):
        (folder / "clips.jsonl").write_text(original)
        _edit(folder, change)
        with pytest.raises(ClipsonicError) as raised:
            Dataset(folder, split="test")  # the check covers every record, not only the split's
        message = str(raised.value)
        assert message.startswith(f"{folder}: ") and "\n" not in message
        for part in expected:
            assert part in message, (part, message)

    def last_mel_longer(records):
        records[5]["mel_frames"] += 1  # c5, the last of shard 1: one frame past the end
        return records

    refused(last_mel_longer, "clip 'c5' claims mel frames 17:28 of shards/mel-00001.npy, which has 27")

    def more_frames(records):
        records[2]["frame_times"].append(2.5)  # c2's embeddings would run past shard 0's 6 rows
        return records

    refused(more_frames, "clip 'c2' claims embedding rows 4:7 of shards/emb-00000.npy, which has 6")

    def overlapping(records):
        records[1]["mel_offset"] = 2  # c1 now reads into c0's frames: another clip's mel, no error today
        return records

    refused(overlapping, "clip 'c1' claims mel frames 2:8 of shards/mel-00000.npy, which clip 'c0' also claims")

    def duplicated(records):
        return records + [records[3]]

    refused(duplicated, "clip 'c3' is listed twice in clips.jsonl")

    def moved(records):
        records[0]["shard"] = 7
        return records

    refused(moved, "clip 'c0' is in shards/mel-00007.npy, which cannot be read (No such file or directory)")
    (folder / "clips.jsonl").write_text(original)
    assert len(Dataset(folder)) == 6


def test_a_cut_shard_is_refused(tmp_path):
    folder = _write(tmp_path / "data")
    shard = folder / "shards" / "emb-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ClipsonicError, match=r"clip 'c3' is in shards/emb-00001.npy, which cannot be read \(cut short"):
        Dataset(folder)
