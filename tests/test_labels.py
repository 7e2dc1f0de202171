import json

import pytest

from clipsonic.errors import ClipsonicError
from clipsonic.data.labels import LabelEntry, assign_split, read_labels


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_file_label_csv_matches_paths_names_and_stems(tmp_path):
    table = read_labels(write(tmp_path / "labels.csv", "file,label,split\nrain/a.mp4,rain,train\n"
                                                       "bell/b.mkv, church  bell ,test\nc.webm,bird,\n"))
    assert table.lookup("rain/a.mp4") == LabelEntry("rain", "train")
    assert table.lookup("elsewhere/b.mkv") == LabelEntry("church bell", "test")  # by name, spaces tidied
    assert table.lookup("c.webm") == LabelEntry("bird", None)  # no split given
    assert table.lookup("d.mp4") is None
    assert table.labels() == ["bird", "church bell", "rain"]


def test_two_column_csv_and_header_in_any_order(tmp_path):
    table = read_labels(write(tmp_path / "l.csv", "label,file\nwind,x/y.mp4\n"))
    assert table.lookup("x/y.mp4") == LabelEntry("wind", None)


def test_vggsound_csv_matches_the_datasets_file_names(tmp_path):
    table = read_labels(write(tmp_path / "vggsound.csv", "---g-f_I2yQ,1,people marching,test\n"
                                                         "abc_def,30,dog barking,train\nabc_def,60,cat purring,train\n"))
    assert table.lookup("---g-f_I2yQ_000001.mp4") == LabelEntry("people marching", "test")
    assert table.lookup("---g-f_I2yQ.mp4") == LabelEntry("people marching", "test")  # one clip per id: by id
    assert table.lookup("sub/abc_def_000030.mp4") == LabelEntry("dog barking", "train")
    assert table.lookup("abc_def.mp4") is None  # two clips share the id: ambiguous, not guessed


def test_music_json(tmp_path):
    data = {"videos": {"acoustic_guitar": ["id1", "id2"], "flute": ["id3"]}}
    table = read_labels(write(tmp_path / "MUSIC_solo_videos.json", json.dumps(data)))
    assert table.lookup("acoustic_guitar/id1.mp4") == LabelEntry("acoustic guitar", None)
    assert table.lookup("id3.mkv") == LabelEntry("flute", None)
    assert len(table) == 3


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "", "empty"),
    ("a.csv", "x,y\n1,2\n", "unrecognised labels format"),
    ("a.csv", "file,label,split\na.mp4,rain,val\n", "a.csv:2: split 'val' must be train or test"),
    ("a.csv", "file,label\na.mp4,\n", "a.csv:2: empty label"),
    ("a.csv", "file,label\na.mp4,rain\na.mp4,bell\n", "a.mp4 is listed twice"),
    ("a.csv", "file,label,split\na.mp4\n", "a.csv:2: expected 3 columns"),
    ("v.csv", "id,1,dog,train\nid,x,dog,train\n", "v.csv:2: expected 'youtube_id,start_seconds,label,split'"),
    ("m.json", "{not json", "not valid JSON"),
    ("m.json", '{"videos": {"flute": "id"}}', "must list YouTube ids"),
])
def test_bad_label_files_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(ClipsonicError, match=message):
        read_labels(write(tmp_path / name, text))


def test_missing_labels_file(tmp_path):
    with pytest.raises(ClipsonicError, match="no such labels file"):
        read_labels(tmp_path / "none.csv")


def test_random_split_is_deterministic_and_near_the_ratio():
    ids = [f"clip-{i}.mp4" for i in range(2000)]
    splits = [assign_split(i, 0.9, seed=0) for i in ids]
    assert splits == [assign_split(i, 0.9, seed=0) for i in ids]
    assert 0.87 < splits.count("train") / len(ids) < 0.93
    assert splits != [assign_split(i, 0.9, seed=1) for i in ids]
    assert all(assign_split(i, 1.0, seed=3) == "train" for i in ids)
