"""The whole product through the CLI at toy sizes: synthetic videos -> preprocess -> train -> train-prior
-> sample -> eval (and eval fad), each step producing the files the next one reads."""

import csv
import json
import subprocess
import sys

import pytest
import soundfile
import torch

from clipsonic.clip import CLIP, CLIPConfig, save_clip
from clipsonic.vggish import VGGish


def run(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "clipsonic", *map(str, args)], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{args[0]}: {done.stderr}"
    return done


@pytest.mark.slow
def test_videos_to_evaluation(tmp_path):
    torch.manual_seed(0)
    clip_path = save_clip(tmp_path / "clip.pt", CLIP(CLIPConfig.preset("tiny").replace(text_width=64)).eval())
    vggish_path = tmp_path / "vggish.pth"  # torchvggish's layout with random weights (the real file is not here)
    torch.save(VGGish().state_dict(), vggish_path)

    run("make-demo-data", tmp_path / "synthetic", "--clips-per-class", 2, "--min-seconds", 4, "--max-seconds", 4,
        "--no-progress")
    data = tmp_path / "data"
    run("preprocess", tmp_path / "synthetic" / "videos", "--out", data, "--labels", tmp_path / "synthetic" / "labels.csv",
        "--clip", clip_path, "--workers", 1, "--no-progress")
    assert len((data / "clips.jsonl").read_text().splitlines()) == 2 * 16  # 2 clips of each of 16 classes
    run("train", data, "--out", tmp_path / "unet", "--preset", "tiny", "--steps", 3, "--batch-size", 2,
        "--save-every", 3, "--no-progress")
    run("train-prior", data, "--out", tmp_path / "prior", "--preset", "tiny", "--steps", 2, "--batch-size", 4,
        "--save-every", 2, "--no-progress")
    models = ["--clip", clip_path, "--checkpoint", tmp_path / "unet" / "checkpoint.pt",
              "--prior", tmp_path / "prior" / "checkpoint.pt"]
    sampled = run("sample", *models, "--text", "a photo of bell", "--steps", 2, "--seconds", 1, "--batch", 2,
                  "-o", tmp_path / "bell.wav", "--seed", 3)
    assert "variant sd" in sampled.stderr
    for index in range(2):
        wav, rate = soundfile.read(tmp_path / f"bell_{index}.wav")
        assert rate == 16000 and len(wav) == 16000

    out = tmp_path / "eval"
    run("eval", data, *models, "--vggish", vggish_path, "--samples", 4, "--batch", 4, "--steps", 2, "--seconds", 1,
        "--guidance-sweep", "1,2", "--save-audio", "--out", out, "--no-progress")
    summary = json.loads((out / "summary.json").read_text())
    assert {(row["variant"], row["guidance"]) for row in summary["fad"]} == \
        {("iq", 1.0), ("iq", 2.0), ("zs", 1.0), ("zs", 2.0), ("sd", 1.0), ("sd", 2.0), ("reconstruction", None)}
    assert all(row["fad"] >= 0 for row in summary["fad"]) and set(summary["cosine_similarity"]) == {"zs", "sd"}
    assert "| CLIPSonic-SD (supervised diffusion prior) | no | image | text |" in (out / "table1.md").read_text()
    assert "| Model | w = 1 | w = 2 |" in (out / "sweep.md").read_text()
    with open(out / "sweep.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 7
    assert (out / "reference_statistics.npz").is_file()
    assert len(list((out / "samples" / "sd_w2").glob("*.wav"))) == 4

    fad = run("eval", "fad", out / "samples" / "sd_w1", out / "samples" / "iq_w1", "--vggish", vggish_path)
    assert fad.stdout.startswith("FAD ") and float(fad.stdout.split()[1]) >= 0
    missing = run("eval", "fad", tmp_path / "nowhere", out / "samples", "--vggish", vggish_path, check=False)
    assert missing.returncode == 1 and "nowhere: not a folder" in missing.stderr

    # The CLIP-TTA baseline: a text-conditioned UNet in a bundle is eval's tta row with no --tta-checkpoint.
    run("train", data, "--out", tmp_path / "tta", "--preset", "tiny", "--steps", 3, "--batch-size", 2,
        "--save-every", 3, "--text-cond", "--no-progress")
    bundle = tmp_path / "bundle"
    wrong = run("bundle", "make", bundle, "--clip", clip_path, "--unet", tmp_path / "unet" / "checkpoint.pt",
                "--tta", tmp_path / "unet" / "checkpoint.pt", check=False)
    assert wrong.returncode == 1 and "not a text-conditioned UNet" in wrong.stderr and not bundle.exists()
    run("bundle", "make", bundle, "--clip", clip_path, "--unet", tmp_path / "unet" / "checkpoint.pt",
        "--prior", tmp_path / "prior" / "checkpoint.pt", "--tta", tmp_path / "tta" / "checkpoint.pt")
    assert (bundle / "tta.pt").is_file() and run("bundle", "verify", bundle).returncode == 0
    baseline = run("eval", data, "--bundle", bundle, "--vggish", vggish_path, "--variants", "tta,sd", "--samples", 4,
                   "--batch", 4, "--steps", 2, "--seconds", 1, "--no-reconstruction", "--out", tmp_path / "eval-tta",
                   "--no-progress")
    assert "the baseline row from the bundle's own text-conditioned UNet" in baseline.stderr
    rows = json.loads((tmp_path / "eval-tta" / "summary.json").read_text())["fad"]
    assert {row["variant"] for row in rows} == {"tta", "sd"} and all(row["fad"] >= 0 for row in rows)
    assert "| CLIP-TTA |" in (tmp_path / "eval-tta" / "table1.md").read_text()

    # The CLAP-TTA baseline end to end: trained on the tiny CLAP's text embeddings, evaluated with its CLAP score.
    from tiny_clap import save_tiny_clap

    clap_file = save_tiny_clap(tmp_path / "clap")
    run("train", data, "--out", tmp_path / "clap-tta", "--preset", "tiny", "--steps", 3, "--batch-size", 2,
        "--save-every", 3, "--cond", "clap-text", "--clap", clap_file, "--no-progress")
    run("eval", data, "--bundle", bundle, "--vggish", vggish_path, "--tta-checkpoint",
        tmp_path / "clap-tta" / "checkpoint.pt", "--clap", clap_file, "--variants", "clap-tta", "--samples", 4,
        "--batch", 4, "--steps", 2, "--seconds", 1, "--out", tmp_path / "eval-clap-tta", "--no-progress")
    rows = {row["variant"]: row for row in json.loads((tmp_path / "eval-clap-tta" / "summary.json").read_text())["fad"]}
    assert set(rows) == {"clap-tta", "reconstruction"} and -1 <= rows["clap-tta"]["clap"] <= 1
    assert rows["clap-tta"]["fad"] >= 0
    clap_row = next(line for line in (tmp_path / "eval-clap-tta" / "table1.md").read_text().splitlines()
                    if line.startswith("| CLAP-TTA"))
    assert "n/a" not in clap_row

    # The CLAP column and Table 5, with a tiny random CLAP (LAION's weights are not here).
    from clipsonic.clap import CLAP, CLAPConfig, clap_score
    from clipsonic.data import Dataset
    from clipsonic.eval.evaluate import CLAP_TEMPLATE, EvalConfig, Evaluator, evaluate
    from clipsonic.pipeline import Pipeline
    from clipsonic.roberta import RobertaTokenizer
    from clipsonic.vggish import load_vggish
    from conftest import FIXTURES

    clap = CLAP(CLAPConfig.preset("tiny"), RobertaTokenizer.from_dir(FIXTURES / "clap_bpe")).eval()
    pipeline = Pipeline.load(clip=clip_path, checkpoint=tmp_path / "unet" / "checkpoint.pt")
    evaluator = Evaluator(pipeline, Dataset(data, split="test"), load_vggish(vggish_path),
                          EvalConfig(samples=4, batch=4, steps=2, seconds=1.0, guidance=(1.0,)), clap=clap)
    scored = evaluate(evaluator, ["iq"], tmp_path / "eval-clap")
    claps = {row["variant"]: row["clap"] for row in scored["fad"]}
    assert set(claps) == {"iq", "reconstruction"} and all(-1 <= value <= 1 for value in claps.values())
    # the column is the mean score of the very samples, against "the sound of [label]"
    _, per_sample = evaluator.generated_embeddings("iq", 1.0)
    mel = pipeline.generate_mel(evaluator.condition("iq")[:4], 1.0, "dpm++", 2, 1.0, 0, batch=4)
    texts = clap.embed_text([CLAP_TEMPLATE.format(label=q.label) for q in evaluator.queries])
    expected = clap_score(clap.embed_audio(pipeline.vocode(mel, 1.0, seed=0)), texts)
    assert per_sample == pytest.approx(expected.tolist(), abs=1e-5) and claps["iq"] == pytest.approx(
        float(expected.mean()), abs=1e-5)
    assert "| CLIPSonic-IQ (image-queried) | - | image | image |" in (tmp_path / "eval-clap" / "table1.md").read_text()
    assert "n/a" not in (tmp_path / "eval-clap" / "table1.md").read_text()
    windows = scored["clap_score"]["windows"]
    assert set(windows) == {"ground truth", "reconstruction"}
    for row in windows.values():
        assert row["min"] <= row["mean"] <= row["max"] and -1 <= row["whole"] <= 1
    assert "| Griffin-Lim mel spectrogram reconstruction |" in (tmp_path / "eval-clap" / "table5.md").read_text()
