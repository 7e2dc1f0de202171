"""`clipsonic eval`: query planning and the tables (the whole command runs in test_end_to_end)."""

import numpy as np
import pytest

from clipsonic.data import Dataset
from clipsonic.errors import ClipsonicError
from clipsonic.eval.evaluate import EvalConfig, Score, plan_queries, sweep_csv, sweep_table, table1, table2, table5
from toydata import make_toy_dataset


def test_queries_cycle_through_the_labelled_test_clips(tmp_path):
    dataset = Dataset(make_toy_dataset(tmp_path / "toy", test_clips=3), split="test")
    queries = plan_queries(dataset, 14, seed=0)
    ids = [q.record.id for q in queries]
    assert len(ids) == 14 and set(ids[:6]) == {r.id for r in dataset.records}  # each clip once per round
    assert ids == [q.record.id for q in plan_queries(dataset, 14, seed=0)]
    assert ids != [q.record.id for q in plan_queries(dataset, 14, seed=1)]
    assert all(q.frame == q.record.frame_count // 2 for q in queries)


def test_unlabelled_test_split_is_an_error(tmp_path):
    from clipsonic.audio import MelConfig
    from clipsonic.data import DatasetWriter

    writer = DatasetWriter(tmp_path / "d", MelConfig(), 4)
    writer.add("a", "a.mp4", np.zeros((64, 40), np.float32), np.zeros((3, 4), np.float32), [0.1, 0.2, 0.3], None,
               "test", 1.3)
    writer.flush()
    with pytest.raises(ClipsonicError, match="no labelled test clips"):
        plan_queries(Dataset(tmp_path / "d", split="test"), 4, 0)


def test_config_checks():
    with pytest.raises(ClipsonicError, match="at least 2"):
        EvalConfig(samples=1)
    with pytest.raises(ClipsonicError, match="non-negative"):
        EvalConfig(guidance=(-1.0,))


def test_tables_follow_the_papers_layout():
    scores = [Score("iq", 1.0, 3.0, 8), Score("iq", 1.5, 2.97, 8), Score("zs", 1.0, 4.0, 8), Score("zs", 1.5, 3.43, 8),
              Score("reconstruction", None, 0.6, 8)]
    one = table1(scores + [Score("sd", 1.5, 3.4567e-4, 8)], 1.5, "Griffin-Lim")
    assert "| CLIPSonic-IQ (image-queried) | - | image | image | 2.97 | n/a |" in one
    assert "| CLIPSonic-ZS (zero-shot modality transfer) | yes | image | text | 3.43 | n/a |" in one
    assert "| Griffin-Lim mel spectrogram reconstruction | - | - | - | 0.6 | n/a |" in one
    assert "| 0.0003457 | n/a |" in one  # significant digits: a small FAD is not printed as 0.000
    assert "| 3 |" not in one  # other guidance weights are not in Table 1
    assert "FAD with torchvggish VGGish" in one
    assert "FAD with the demo bundle's VGGish: a demo FAD, not comparable with the paper's" in \
        table1(scores, 1.5, "Griffin-Lim", "demo")
    assert "| CLIPSonic-ZS | sim(q_text, q_img) | 0.205 |" in table2({"zs": 0.205})
    sweep = sweep_table(scores, [1.0, 1.5])
    assert "| Model | w = 1 | w = 1.5 |" in sweep and "| CLIPSonic-ZS (zero-shot modality transfer) | 4 | 3.43 |" in sweep
    assert sweep_csv(scores).splitlines()[1:3] == ["iq,1,3.000000,8,", "iq,1.5,2.970000,8,"]
    assert sweep_csv(scores).splitlines()[-1] == "reconstruction,,0.600000,8,"
    clapped = table1([Score("iq", 1.5, 2.97, 8, 0.4321), Score("reconstruction", None, 0.6, 8, 0.5)], 1.5, "BigVGAN")
    assert "| 2.97 | 0.432 |" in clapped and "| BigVGAN mel spectrogram reconstruction | - | - | - | 0.6 | 0.500 |" in clapped
    five = table5({"ground truth": {"max": 0.5, "mean": 0.4, "min": 0.3, "whole": 0.45},
                   "reconstruction": {"max": 0.4, "mean": 0.3, "min": 0.2, "whole": 0.35}}, "Griffin-Lim")
    assert "| ground truth | 0.500 | 0.400 | 0.300 | 0.450 |" in five
    assert "| Griffin-Lim mel spectrogram reconstruction | 0.400 | 0.300 | 0.200 | 0.350 |" in five


def test_eval_takes_the_bundles_own_vggish_when_none_is_given(tmp_path):
    from clipsonic.bundle import shipped_bundle
    from clipsonic.eval.evaluate import vggish_path
    from clipsonic.vggish import load_vggish

    own = vggish_path(None, shipped_bundle())
    assert own == shipped_bundle() / "vggish.pt" and load_vggish(own).origin == "demo"
    assert vggish_path(tmp_path / "given.pth", shipped_bundle()) == tmp_path / "given.pth"
