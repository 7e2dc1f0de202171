"""LAION-CLAP against laion_clap 1.1.7 (tests/fixtures/make_clap_fixtures.py made the fixtures).

Fast tests use the fixture's tokenizer files, log-mels and the tiny preset; the ``slow`` ones
rebuild the seeded full-size weights (HTSAT-tiny + roberta-base, 154 M parameters), write them
in LAION's checkpoint layout and compare embeddings with the reference's.
"""

import json
import sys

import numpy as np
import pytest
import torch

from clipsonic.clap import (CLAP, FUSION_KEY, UNUSED_KEYS, CLAPConfig, audio_input, clap_score, crop_start,
                            fusion_chunk_starts, load_clap, log_mel, quantize_int16, repeat_pad, save_clap,
                            set_clap_precision)
from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.resample import resample
from clipsonic.roberta import RobertaTokenizer
from conftest import FIXTURES

sys.path.insert(0, str(FIXTURES))
from make_clap_fixtures import (BPE_DIR, CHUNK_SEED, CLIP_SECONDS, WEIGHT_SEEDS, checksum,  # noqa: E402
                                model_shapes, seeded_clap_state_dict)
from tiny_clap import save_tiny_clap, seeded_model  # noqa: E402

RECORDS = json.loads((FIXTURES / "clap_tokens.json").read_text(encoding="utf-8"))
LAYOUT = json.loads((FIXTURES / "clap_layout.json").read_text(encoding="utf-8"))
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 3e-2  # measured: 0.7-0.8 % (audio), 1.0-1.5 % (text) on the full-size seeded weights


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "clap_reference.npz")


@pytest.fixture(scope="module")
def tokenizer():
    return RobertaTokenizer.from_dir(BPE_DIR)


def relative_error(ours, expected) -> float:
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(ours - expected) / np.linalg.norm(expected))


def clip_16k(reference, seconds: float) -> torch.Tensor:
    """The first `seconds` of the fixture's signal, float32 [1, T] at 16 kHz."""
    return torch.from_numpy(reference["wav_16k"][:round(seconds * 16000)].astype(np.float32) / 32768)[None]


def quantised_48k(reference, seconds: float) -> torch.Tensor:
    return quantize_int16(resample(clip_16k(reference, seconds), 16000, 48000))


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("record", RECORDS, ids=[repr(r["text"][:24]) for r in RECORDS])
def test_token_ids_match_hugging_face(tokenizer, record):
    ids, mask = tokenizer([record["text"]], 77)
    length = len(record["ids"])
    assert ids[0, :length].tolist() == record["ids"]
    assert (ids[0, length:] == 1).all() and mask[0].tolist() == [1] * length + [0] * (77 - length)


def test_fixture_covers_the_tricky_cases():
    texts = [record["text"] for record in RECORDS]
    assert any(record["full_length"] > 77 for record in RECORDS) and "" in texts
    assert any("<mask>" in text for text in texts) and any("🎵" in text for text in texts)
    assert any("\n" in text for text in texts) and any(text.startswith(" ") for text in texts)


def test_a_batch_tokenizes_like_its_texts(tokenizer):
    texts = [record["text"] for record in RECORDS]
    ids, mask = tokenizer(texts, 77)
    for row, text in enumerate(texts):
        single_ids, single_mask = tokenizer([text], 77)
        assert torch.equal(ids[row], single_ids[0]) and torch.equal(mask[row], single_mask[0])
    with pytest.raises(TypeError, match="list of texts"):
        tokenizer("one string", 77)


def test_symbols_missing_from_the_vocabulary_become_unk():
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    tokenizer = RobertaTokenizer({**specials, "a": 5, "b": 6}, [("a", "b")])  # "ab" is merged but has no id
    assert tokenizer.encode("ab a") == [3, 3, 5]  # "ab" -> <unk>, then " a": "Ġ" (the space, no id) and "a"
    assert tokenizer.encode("ba") == [6, 5]


def test_missing_tokenizer_files_are_named_with_their_source(tmp_path):
    checkpoint = tmp_path / "630k-audioset-fusion-best.pt"  # never read: the tokenizer is checked first
    with pytest.raises(ClipsonicError, match=r"no vocab\.json.*huggingface\.co/roberta-base"):
        load_clap(checkpoint)
    (tmp_path / "vocab.json").write_text((BPE_DIR / "vocab.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ClipsonicError, match=r"no merges\.txt.*huggingface\.co/roberta-base.*tokenizer_dir"):
        load_clap(checkpoint)
    with pytest.raises(ClipsonicError, match=r"no vocab\.json"):
        load_clap(checkpoint, tokenizer_dir=tmp_path / "elsewhere")


# ---------------------------------------------------------------- audio front end


def check_log_mel(ours: torch.Tensor, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape
    assert relative_error(ours, expected) <= FP32_TOLERANCE
    # Far below the clip's peak, float32 FFT rounding dominates; elsewhere agreement is close.
    loud = expected > -20
    assert np.abs(ours.numpy() - expected)[loud].max() <= 1e-3


def test_fusion_log_mel_matches_torchaudio(reference):
    mel, fused = audio_input(quantised_48k(reference, 4), CLAPConfig.preset("htsat-tiny"))
    assert not fused and mel.shape == (1, 1, 1001, 64)
    check_log_mel(mel[0, 0], reference["mel_fusion_4s"])


def test_non_fusion_log_mel_matches_torchlibrosa(reference):
    mel, fused = audio_input(quantised_48k(reference, 4), CLAPConfig.preset("htsat-tiny", audio={"fusion": False}))
    assert not fused
    check_log_mel(mel[0, 0], reference["mel_plain_4s"])


def test_long_clip_fusion_input_matches_the_reference(reference):
    mel, fused = audio_input(quantised_48k(reference, 12), CLAPConfig.preset("htsat-tiny"), seed=CHUNK_SEED)
    assert fused and mel.shape == (1, 4, 1001, 64)
    assert fusion_chunk_starts(1201, 1001, CHUNK_SEED) == tuple(reference["chunk_starts"])
    for channel in range(4):  # the shrunk whole clip, then the three chunks
        check_log_mel(mel[0, channel], reference["mel_fusion_12s"][channel])


def test_chunk_and_crop_choices_come_from_the_seed_alone():
    starts = fusion_chunk_starts(1201, 1001, 3)
    assert starts == fusion_chunk_starts(1201, 1001, 3)
    assert 0 <= starts[0] <= 66 and 67 <= starts[1] <= 133 and 134 <= starts[2] <= 200  # one per third
    assert len({fusion_chunk_starts(1201, 1001, seed) for seed in range(8)}) > 1
    assert fusion_chunk_starts(1002, 1001, 0) == (0, 1, 0)  # two possible starts: the empty third takes 0
    crops = {crop_start(96000, seed) for seed in range(8)}
    assert len(crops) > 1 and all(0 <= crop <= 96000 for crop in crops)


def test_int16_round_trip_and_repeat_padding():
    wav = torch.tensor([[0.5, -0.5, 1.5, -2.0, 1e-5, -1e-5]])
    expected = torch.tensor([[16383, -16383, 32767, -32767, 0, 0]]) / 32767  # truncated toward zero, clipped
    assert torch.equal(quantize_int16(wav), expected.float())
    assert repeat_pad(torch.tensor([[1.0, 2.0, 3.0]]), 10).tolist() == [[1, 2, 3, 1, 2, 3, 1, 2, 3, 0]]


def test_a_clip_under_one_hop_over_ten_seconds_is_not_fused():
    config = CLAPConfig.preset("htsat-tiny")
    wav = 0.1 * torch.randn(2, 480000 + 479, generator=torch.Generator().manual_seed(0))
    mel, fused = audio_input(wav, config)
    assert not fused and mel.shape == (2, 1, 1001, 64)
    torch.testing.assert_close(mel[:, 0], log_mel(wav, config))


# ---------------------------------------------------------------- the model, tiny preset


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return seeded_model(CLAPConfig.preset("tiny"), 1, tokenizer)


def test_batches_give_the_per_clip_embeddings(tiny_model, reference):
    for seconds in (4, 12):  # repeat-padded, and fused from three chunks
        clip = clip_16k(reference, seconds)
        clips = torch.cat([clip, 0.5 * clip.flip(-1)] + ([torch.zeros_like(clip)] if seconds == 4 else []))
        together = tiny_model.embed_audio(clips, 16000, seed=2)
        assert together.shape == (len(clips), 32) and together.dtype == torch.float32
        torch.testing.assert_close(together.norm(dim=-1), torch.ones(len(clips)))
        for row, single in enumerate(clips):
            torch.testing.assert_close(together[row], tiny_model.embed_audio(single[None], 16000, seed=2)[0],
                                       rtol=1e-4, atol=1e-5)


def test_sample_rate_is_converted_to_48k(tiny_model, reference):
    at_16k = clip_16k(reference, 4)
    at_48k = resample(at_16k, 16000, 48000)
    torch.testing.assert_close(tiny_model.embed_audio(at_48k, 48000), tiny_model.embed_audio(at_16k, 16000))


def test_text_batches_give_the_per_text_embeddings(tiny_model):
    texts = ["rain", "a dog barking far away, then a car", "", "the sound of rain on a tin roof " * 12]
    together = tiny_model.embed_text(texts)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(4))
    for row, text in enumerate(texts):  # alone, a short text runs on fewer (unpadded) positions
        torch.testing.assert_close(together[row], tiny_model.embed_text([text])[0], rtol=1e-4, atol=1e-5)


def test_bf16_stays_close_to_fp32(tokenizer, reference):
    model = seeded_model(CLAPConfig.preset("tiny"), 1, tokenizer)
    clips, texts = torch.cat([clip_16k(reference, 4), clip_16k(reference, 12)[:, -64000:]]), ["rain", "a bell"]
    audio32, text32 = model.embed_audio(clips), model.embed_text(texts)
    set_clap_precision(model, torch.bfloat16)
    assert model.audio_branch.layers[0].blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model.audio_branch.bn0.running_var.dtype == torch.float32
    assert model.text_branch.embeddings.LayerNorm.weight.dtype == torch.float32
    audio16, text16 = model.embed_audio(clips), model.embed_text(texts)
    assert audio16.dtype == text16.dtype == torch.float32
    assert relative_error(audio16, audio32) <= BF16_TOLERANCE and relative_error(text16, text32) <= BF16_TOLERANCE


def test_clap_score_is_the_row_wise_cosine(tiny_model, reference):
    audio = tiny_model.embed_audio(torch.cat([clip_16k(reference, 4), clip_16k(reference, 12)[:, -64000:]]))
    text = tiny_model.embed_text(["rain", "a bell"])
    scores = clap_score(audio, text)
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, torch.nn.functional.cosine_similarity(audio, text))
    with pytest.raises(ValueError, match="pairs"):
        clap_score(audio, text[:1])


def test_bad_inputs_are_refused(tiny_model):
    with pytest.raises(ValueError, match=r"float clips \[B, T\]"):
        tiny_model.embed_audio(torch.zeros(16000))
    with pytest.raises(ValueError, match="no audio"):
        tiny_model.embed_audio(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="list of texts"):
        tiny_model.embed_text("rain")
    with pytest.raises(ClipsonicError, match="no tokenizer"):
        CLAP(CLAPConfig.preset("tiny")).embed_text(["rain"])


# ---------------------------------------------------------------- checkpoints


def test_our_keys_are_the_reference_layout():
    for kind in ("fusion", "plain"):
        ours = model_shapes(CLAPConfig.preset("htsat-tiny", audio={"fusion": kind == "fusion"}))
        theirs = {name: tuple(shape) for name, shape in LAYOUT[kind].items()}
        assert {name: theirs.get(name) for name in ours} == ours
        unused = sorted(set(theirs) - set(ours))
        # STFT (2) and mel (1) matrices, tagging head (4), loss MLPs (8), 5 shift masks, 12 index tables.
        assert all(UNUSED_KEYS.search(name) for name in unused) and len(unused) == 32
        assert (FUSION_KEY in theirs) == (kind == "fusion")


def official_layout(state: dict[str, torch.Tensor], extra: dict[str, tuple[int, ...]]) -> dict:
    """A checkpoint as LAION's training loop saves it: DataParallel's "module." prefix, the keys no
    embedding reads (here zeros of the given shapes), transformers < 4.31's position ids, and the
    optimizer state with NumPy-scalar learning rates."""
    full = {**state, **{name: torch.zeros(shape) for name, shape in extra.items()}}
    full["text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    return {"epoch": 45, "name": "clap", "state_dict": {"module." + k: v for k, v in full.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(1.2e-5), "initial_lr": np.float64(1e-4),
                                                         "betas": (0.9, 0.99), "params": [0, 1]}]}}


def save_official(path, payload, numpy1: bool = False):
    """`numpy1`: as pickled under NumPy 1, whose core module had no underscore (a legacy-format
    file, where the module name can be rewritten in place)."""
    if not numpy1:
        torch.save(payload, path)
        return path
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return path


TINY_UNUSED = {"audio_branch.head.weight": (527, 527), "audio_branch.layers.0.blocks.1.attn_mask": (64, 64, 64),
               "audio_branch.spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
               "text_transform.sequential.0.weight": (32, 32)}


@pytest.mark.parametrize("numpy1", [False, True])
def test_official_layout_loads_strictly(tmp_path, tiny_model, reference, numpy1):
    state = seeded_clap_state_dict(model_shapes(CLAPConfig.preset("tiny")), 1)
    path = save_official(tmp_path / "630k-audioset-fusion-best.pt", official_layout(state, TINY_UNUSED), numpy1)
    model = load_clap(path, BPE_DIR, config="tiny")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    clip = clip_16k(reference, 4)
    torch.testing.assert_close(model.embed_audio(clip), tiny_model.embed_audio(clip))
    torch.testing.assert_close(model.embed_text(["rain"]), tiny_model.embed_text(["rain"]))


def test_our_checkpoint_rebuilds_any_size_with_the_tokenizer_beside_it(tmp_path, tiny_model, reference):
    path = save_tiny_clap(tmp_path / "ours", joint_dim=24)
    model = load_clap(path)  # config from the file, tokenizer files from its folder
    assert model.config == CLAPConfig.preset("tiny", joint_dim=24)
    assert model.embed_audio(clip_16k(reference, 4)).shape == (1, 24) and model.embed_text(["rain"]).shape == (1, 24)
    same = load_clap(save_clap(tmp_path / "again.pt", tiny_model), BPE_DIR)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(same.state_dict()[name], tensor), name
    torch.save({"format": "clipsonic.unet", "version": 1, "config": {}, "state_dict": {}}, tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match=r"unet\.pt: is a unet checkpoint, expected a clap checkpoint"):
        load_clap(tmp_path / "unet.pt", BPE_DIR)


def tiny_checkpoint(path, change=None):
    state = {name: torch.zeros(shape) for name, shape in model_shapes(CLAPConfig.preset("tiny")).items()}
    if change is not None:
        change(state)
    torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("text_branch.pooler.dense.bias"), r"missing keys: text_branch\.pooler\.dense\.bias"),
    (lambda s: s.update({"audio_branch.extra.weight": torch.zeros(1)}),
     r"unexpected keys: audio_branch\.extra\.weight"),
    (lambda s: s.update({"audio_projection.0.weight": torch.zeros(32, 96)}),
     r"shape mismatch: audio_projection\.0\.weight \(32, 96\) vs model \(32, 128\)"),
])
def test_loading_is_strict_and_names_the_key(tmp_path, change, message):
    path = tiny_checkpoint(tmp_path / "clap.pt", change)
    with pytest.raises(CheckpointError, match=r"clap\.pt: does not fit CLAP") as error:
        load_clap(path, BPE_DIR, config="tiny")
    assert error.match(message)


class NotATensor:
    """An object of a class the safe loader does not allow: a pickle that would run code."""


def test_other_files_are_refused(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vggish.pth")
    with pytest.raises(CheckpointError, match=r"vggish\.pth: not a LAION-CLAP checkpoint \(no audio_branch"):
        load_clap(tmp_path / "vggish.pth", BPE_DIR)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: not a LAION-CLAP checkpoint \(expected a dict of tensors"):
        load_clap(tmp_path / "list.pt", BPE_DIR)
    torch.save({"state_dict": {"audio_branch.x": NotATensor()}}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"code\.pt: refused to load"):
        load_clap(tmp_path / "code.pt", BPE_DIR)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_clap(tmp_path / "missing.pt", BPE_DIR)


def test_the_tokenizer_must_fit_the_text_encoder(tmp_path):
    path = tiny_checkpoint(tmp_path / "clap.pt")
    small = CLAPConfig.preset("tiny").replace(text={**CLAPConfig.preset("tiny").text.to_dict(), "vocab_size": 100})
    expected = r"tokenizer \(ids up to \d+, <pad> = 1\) does not fit the text encoder \(100 embeddings"
    with pytest.raises(ClipsonicError, match=expected):
        load_clap(path, BPE_DIR, config=small)


# ---------------------------------------------------------------- full size against the reference


@pytest.fixture(scope="module")
def full_model(request, tmp_path_factory):
    """(kind, checkpoint path, model) for `kind` (the parameter, "fusion" or "plain"): the seeded
    full-size weights written in LAION's layout and loaded by `load_clap`."""
    kind = request.param
    config = CLAPConfig.preset("htsat-tiny", audio={"fusion": kind == "fusion"})
    state = seeded_clap_state_dict(model_shapes(config), WEIGHT_SEEDS[kind])
    assert checksum(state) == pytest.approx(LAYOUT["checksums"][kind], rel=1e-12), "the seeded weights changed"
    unused = {name: tuple(shape) for name, shape in LAYOUT[kind].items() if name not in state}
    path = tmp_path_factory.mktemp("clap") / f"630k-audioset-{kind}-best.pt"
    torch.save(official_layout(state, unused), path)
    del state
    model = load_clap(path, BPE_DIR)  # config read from the checkpoint's keys
    assert model.config == config
    yield kind, path, model
    path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("full_model", ["fusion", "plain"], indirect=True)
def test_full_audio_embeddings_match_laion_clap(full_model, reference):
    kind, _, model = full_model
    assert sum(p.numel() for p in model.parameters()) == (153_507_530 if kind == "fusion" else 153_492_890)
    for row, seconds in enumerate(CLIP_SECONDS[kind]):
        ours = model.embed_audio(clip_16k(reference, seconds), 16000, seed=CHUNK_SEED)
        assert relative_error(ours[0], reference[f"audio_{kind}"][row]) <= FP32_TOLERANCE, seconds


@pytest.mark.slow
@pytest.mark.parametrize("full_model", ["fusion"], indirect=True)  # the same text encoder in both
def test_full_text_embeddings_match_laion_clap(full_model, reference):
    _, _, model = full_model
    ours = model.embed_text([str(text) for text in reference["texts"]])
    assert relative_error(ours, reference["text_fusion"]) <= FP32_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("full_model", ["fusion"], indirect=True)
def test_full_bf16_error_is_within_the_stated_tolerance(full_model, reference):
    _, path, _ = full_model
    model = load_clap(path, BPE_DIR, dtype=torch.bfloat16)
    for row, seconds in enumerate(CLIP_SECONDS["fusion"]):
        ours = model.embed_audio(clip_16k(reference, seconds), 16000, seed=CHUNK_SEED)
        assert relative_error(ours[0], reference["audio_fusion"][row]) <= BF16_TOLERANCE, seconds
    ours = model.embed_text([str(text) for text in reference["texts"]])
    for row in range(len(ours)):
        assert relative_error(ours[row], reference["text_fusion"][row]) <= BF16_TOLERANCE, row
