import pickle
import struct
import json
import zipfile

import numpy as np
import pytest
import torch

from clipsonic import clip
from clipsonic.checkpoint import save_checkpoint
from clipsonic.errors import CheckpointError
from clipsonic.imageproc import resize_center_crop
from clipsonic.nn import set_precision
from clipsonic.tensorfiles import read_safetensors, read_torchscript
from conftest import FIXTURES
from seeded import PREPROCESS_SIZES, natural_image, seeded_pixels, seeded_state_dict


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    expected = torch.from_numpy(reference)
    return (torch.linalg.norm(ours - expected) / torch.linalg.norm(expected)).item()


def seeded_model(config: clip.CLIPConfig, seed: int) -> clip.CLIP:
    model = clip.CLIP(config).eval()
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes, seed))
    return model


def check_against_openai(model: clip.CLIP, reference, seed: int, images: int) -> None:
    assert sorted(model.state_dict()) == list(reference["state_keys"])  # OpenAI's key names, all of them
    pixels = seeded_pixels(images, model.config.image_resolution, seed + 1)
    tokens = torch.from_numpy(reference["tokens"])
    with torch.no_grad():
        image = model.encode_image(pixels)
        text, per_token = model.encode_text(tokens, return_tokens=True)
    assert image.dtype == text.dtype == torch.float32
    assert relative_error(image, reference["image_features"]) <= 1e-4
    assert relative_error(text, reference["text_features"]) <= 1e-4
    assert per_token.shape == (tokens.shape[0], 77, model.config.text_width)
    assert relative_error(per_token[:1], reference["token_encodings"]) <= 1e-4


def test_tiny_clip_matches_openai_code():
    reference = np.load(FIXTURES / "clip_tiny.npz")
    check_against_openai(seeded_model(clip.CLIPConfig.preset("tiny", vocab_size=1000), 7), reference, 7, 3)


@pytest.mark.slow
def test_full_vit_l14_matches_openai_code():
    reference = np.load(FIXTURES / "clip_vit_l14.npz")
    model = seeded_model(clip.CLIPConfig.preset("paper"), 14)
    assert sum(p.numel() for p in model.parameters()) == 427_616_513
    check_against_openai(model, reference, 14, 2)


def test_bf16_path_keeps_norms_in_fp32_and_agrees():
    model = seeded_model(clip.CLIPConfig.preset("tiny"), 1)
    pixels = seeded_pixels(2, 32, 2)
    tokens = torch.randint(1, 49000, (2, 77))
    tokens[:, 10] = 49407
    with torch.no_grad():
        image32, text32 = model.encode_image(pixels), model.encode_text(tokens)
        set_precision(model, torch.bfloat16)
        image16, text16 = model.encode_image(pixels), model.encode_text(tokens)
    assert model.visual.conv1.weight.dtype == torch.bfloat16 and model.ln_final.weight.dtype == torch.float32
    assert image16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(image16, image32).min() > 0.999
    assert torch.nn.functional.cosine_similarity(text16, text32).min() > 0.999


def test_openai_torchscript_archive_loads_without_running_code():
    model = clip.load_clip(FIXTURES / "clip_tiny_torchscript.pt")
    assert model.dtype == torch.float32  # the archive is fp16
    assert (model.config.vision_width, model.config.vocab_size, model.config.embed_dim) == (64, 512, 32)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    expected = seeded_state_dict(shapes, 3)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name].half().float(), rtol=0, atol=0, msg=name)
    raw = read_torchscript(FIXTURES / "clip_tiny_torchscript.pt")
    assert {"input_resolution", "context_length", "vocab_size"} <= set(raw)
    half = clip.load_clip(FIXTURES / "clip_tiny_torchscript.pt", dtype=torch.float16)
    assert half.visual.conv1.weight.dtype == torch.float16


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_torchscript_reader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"weights": RunsCode(marker)}, protocol=2))
        archive.writestr("evil/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match="evil.pt: refused to import posix.system|evil.pt: .*refused"):
        clip.load_clip(path)
    assert not marker.exists()


def test_hugging_face_layout_matches_transformers():
    folder = FIXTURES / "clip_tiny_hf"
    reference = np.load(folder / "expected.npz")
    model = clip.load_clip(folder)
    assert (model.config.vision_heads, model.config.text_heads, model.config.embed_dim) == (2, 2, 48)
    pixels = seeded_pixels(2, 32, 6)
    with torch.no_grad():
        image = model.encode_image(pixels)
        text, per_token = model.encode_text(torch.from_numpy(reference["tokens"]), return_tokens=True)
    assert relative_error(image, reference["image_features"]) <= 1e-4
    assert relative_error(text, reference["text_features"]) <= 1e-4
    assert relative_error(per_token, reference["token_encodings"]) <= 1e-4
    # The bin file alone (heads from the config beside it) and a safetensors copy load the same.
    same = clip.load_clip(folder / "pytorch_model.bin")
    assert same.config == model.config


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        dtype = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}[tensor.dtype]
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_safetensors_hugging_face_file(tmp_path):
    state = torch.load(FIXTURES / "clip_tiny_hf" / "pytorch_model.bin", weights_only=True)
    folder = tmp_path / "hf"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", state)
    (folder / "config.json").write_bytes((FIXTURES / "clip_tiny_hf" / "config.json").read_bytes())
    read = read_safetensors(folder / "model.safetensors")
    assert all(torch.equal(read[name], tensor) for name, tensor in state.items())
    from_safetensors = clip.load_clip(folder)
    from_bin = clip.load_clip(FIXTURES / "clip_tiny_hf")
    for name, tensor in from_bin.state_dict().items():
        assert torch.equal(from_safetensors.state_dict()[name], tensor), name


def test_openai_state_dict_and_our_checkpoint(tmp_path):
    model = seeded_model(clip.CLIPConfig.preset("tiny"), 4)
    state = {name: t.half() for name, t in model.state_dict().items()}
    state["input_resolution"] = torch.tensor(32)
    torch.save(state, tmp_path / "openai_state.pt")
    from_state = clip.load_clip(tmp_path / "openai_state.pt")
    assert from_state.config == clip.CLIPConfig.preset("tiny")
    clip.save_clip(tmp_path / "ours.pt", from_state)
    ours = clip.load_clip(tmp_path / "ours.pt")
    for name, tensor in from_state.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


def test_loading_errors_name_file_and_problem(tmp_path):
    save_checkpoint(tmp_path / "unet.pt", "unet", {}, {})
    with pytest.raises(CheckpointError, match="unet.pt: is a unet checkpoint, expected a clip checkpoint"):
        clip.load_clip(tmp_path / "unet.pt")
    model = seeded_model(clip.CLIPConfig.preset("tiny"), 4)
    state = model.state_dict()
    del state["ln_final.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="broken.pt: does not fit CLIP: missing keys: ln_final.bias"):
        clip.load_clip(tmp_path / "broken.pt")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "rn50.pt")
    with pytest.raises(CheckpointError, match="rn50.pt: ResNet CLIP towers are not supported"):
        clip.load_clip(tmp_path / "rn50.pt")
    with pytest.raises(CheckpointError, match="nothing.pt: no such CLIP checkpoint"):
        clip.load_clip(tmp_path / "nothing.pt")


@pytest.mark.parametrize("preset,params", [("vit-b-32", 151_277_313), ("vit-b-16", 149_620_737),
                                           ("vit-l-14-336", 427_944_193)])
def test_presets_have_the_official_sizes(preset, params):
    config = clip.CLIPConfig.preset(preset)
    with torch.device("meta"):
        model = clip.CLIP(config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert clip.config_from_state_dict(model.state_dict()) == config


@pytest.mark.parametrize("index", range(len(PREPROCESS_SIZES)))
def test_preprocess_matches_the_pil_pipeline(index):
    height, width = PREPROCESS_SIZES[index]
    image = natural_image(height, width, seed=100 + index)
    reference = np.load(FIXTURES / "clip_preprocess.npz")[f"pil_{index}"]
    ours = clip.preprocess_image(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    expected = (torch.from_numpy(reference).permute(2, 0, 1).float() / 255 - torch.tensor(clip.IMAGE_MEAN).view(3, 1, 1)) \
        / torch.tensor(clip.IMAGE_STD).view(3, 1, 1)
    assert (ours - expected).abs().max() <= 0.02
    # In fact bit-exact with PIL's 8-bit arithmetic:
    assert torch.equal(resize_center_crop(torch.from_numpy(image), 224), torch.from_numpy(reference))


def test_preprocess_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        clip.preprocess_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        clip.preprocess_image(np.zeros((10, 10), dtype=np.uint8))


def test_encoders_check_shapes():
    model = clip.CLIP(clip.CLIPConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match=r"encode_image expects pixels \[B, 3, 32, 32\]"):
        model.encode_image(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match=r"encode_text expects tokens \[B, 77\]"):
        model.encode_text(torch.zeros(1, 10, dtype=torch.long))
