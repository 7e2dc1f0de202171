"""VGGish (Hershey et al., 2017): the AudioSet audio embedding behind the Fréchet audio distance.

Re-derived from Google's ``tensorflow/models/research/audioset/vggish`` (Apache-2.0) and its
PyTorch port ``harritaylor/torchvggish``, whose ``vggish-10086976.pth`` state dict loads here
strictly under its own key names (``features.{0,3,6,8,11,13}`` convolutions,
``embeddings.{0,2,4}`` linear layers).

Front end (``vggish_input.waveform_to_examples`` / ``mel_features``): 16 kHz mono; frames of
400 samples (25 ms) every 160 (10 ms), no padding, incomplete frames dropped; a periodic Hann
window; the magnitude of a 512-point FFT (the frame zero-padded at its end); an HTK mel matrix
of 64 bands from 125 to 7500 Hz; ``log(mel + 0.01)``; then non-overlapping examples of 96
frames (0.96 s), the incomplete tail dropped. The HTK mel matrix: the 257 FFT bins sit at
``linspace(0, 8000, 257)`` Hz, mel(f) = 1127 ln(1 + f / 700), 66 band edges evenly spaced in
mel from mel(125) to mel(7500), band i a triangle in mel from edge i through edge i+1 to edge
i+2 (peak 1, no area normalisation), and the DC bin's row zeroed.

Network: VGG-style convolutions (64, pool, 128, pool, 256, 256, pool, 512, 512, pool; 3x3,
ReLU, 2x2 max-pooling) on a [96, 64] example, then 12288 -> 4096 -> 4096 -> 128. The 512x6x4
feature map is flattened in TensorFlow's NHWC order (height, width, channel), as torchvggish's
transposes do.

Differences from the references: the front end is vectorised torch in float32 (the reference
uses float64 numpy); examples of many clips go through the network in batches; bfloat16 is
available on request. Other sample rates are converted with `clipsonic.resample.resample`
set to resampy's ``kaiser_best`` filter, which the reference uses: the band edge (7.34 kHz
from 44.1 kHz) decides the top mel band. resampy samples its filter table on a slightly
rounded grid, so on white noise the two agree to ~2e-4 (relative) from 44.1 kHz and ~8e-4
from 48 kHz, not exactly.

`VGGish.embed` returns the 128-d output WITHOUT the final ReLU and WITHOUT PCA by default:
that is what frechet-audio-distance (the paper's FAD implementation, ``use_pca=False,
use_activation=False``) feeds to the Fréchet distance. ``relu=True`` gives torchvggish's
activation; ``pca=True`` applies the AudioSet release's PCA whitening and 8-bit quantisation
(``vggish_pca_params-970ea276.pth``), see `VGGish.postprocess`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clipsonic.checkpoint import (FORMAT_PREFIX, load_checkpoint, load_state_dict_strict, safe_torch_load,
                                  save_checkpoint)
from clipsonic.config import Config
from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.resample import resample

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # the next power of two above the window
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s, no overlap
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
POOLED_AFTER = (0, 1, 3, 5)  # 2x2 max-pooling follows these convolutions (of six)
CHECKPOINT_KIND = "vggish"  # our own checkpoints (the demo bundle's VGGish); torchvggish's are plain state dicts
CHECKPOINT_VERSION = 1
DEFAULT_BATCH = 32  # examples per convolution call: on CPU, larger ones spill out of cache
LINEAR_BATCH = 512  # examples per linear-layer call
# resampy's "kaiser_best" filter, which the reference resamples with: 50 zero crossings of the
# unscaled sinc (as `resample` counts them: of the rolled-off one, 50 * rolloff), roll-off
# 0.9173 of the output Nyquist frequency, Kaiser beta 12.98 (read from resampy 0.4's filter table).
RESAMPY_BEST_ROLLOFF = 0.9173473712608761
RESAMPY_BEST = {"zero_crossings": 50 * RESAMPY_BEST_ROLLOFF, "rolloff": RESAMPY_BEST_ROLLOFF,
                "beta": 12.984585247040}

# ---------------------------------------------------------------- front end


def _hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def htk_mel_matrix() -> np.ndarray:
    """The reference's mel matrix [257 FFT bins, 64 bands], float64 (recipe in the module docstring)."""
    bins_mel = _hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_SIZE // 2 + 1))
    edges = np.linspace(_hertz_to_mel(MEL_MIN_HZ), _hertz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)  # [bins, bands]
    falling = (upper - bins_mel[:, None]) / (upper - center)
    matrix = np.maximum(0.0, np.minimum(rising, falling))
    matrix[0] = 0.0  # HTK leaves out the DC bin
    matrix.setflags(write=False)
    return matrix


@lru_cache(maxsize=8)
def _front_end_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The periodic Hann window [400] and the mel matrix [257, 64], float32 on `device`.

    The window is built in float64 and cast, like the reference's (float32 cosines differ in
    the last bits between backends)."""
    n = torch.arange(WINDOW_SAMPLES, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW_SAMPLES)
    matrix = torch.from_numpy(np.array(htk_mel_matrix()))
    return window.to(device, torch.float32), matrix.to(device, torch.float32)


def log_mel(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel frames of 16 kHz audio: `wav` [..., T] -> [..., 1 + (T - 400) // 160, 64], float32.

    Shorter than one window (400 samples) gives zero frames.
    """
    wav = wav.float()
    window, matrix = _front_end_constants(wav.device)
    if wav.shape[-1] < WINDOW_SAMPLES:
        return wav.new_zeros(*wav.shape[:-1], 0, MEL_BANDS)
    frames = wav.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES)  # [..., F, 400], a strided view
    magnitude = torch.fft.rfft(frames * window, n=FFT_SIZE).abs()  # [..., F, 257]
    return torch.log(magnitude @ matrix + LOG_OFFSET)


def to_mono_16k(wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """`wav` [T] or [C, T] (floats, nominally in [-1, 1]) at `sample_rate` -> mono float32 [T'] at
    16 kHz: channels averaged, then resampled like the reference (length rounded down)."""
    wav = torch.as_tensor(wav)
    if not wav.is_floating_point():
        raise ValueError(f"expected a floating-point waveform in [-1, 1], got {wav.dtype} samples")
    if wav.dim() == 2 and wav.shape[0] > wav.shape[1]:
        raise ValueError(f"waveform of shape {tuple(wav.shape)} looks like [T, C]; pass [C, T]")
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    elif wav.dim() != 1:
        raise ValueError(f"expected a waveform [T] or [C, T], got shape {tuple(wav.shape)}")
    wav = wav.float()
    if sample_rate == SAMPLE_RATE:
        return wav
    length = wav.shape[-1] * SAMPLE_RATE // int(sample_rate)
    return resample(wav, int(sample_rate), SAMPLE_RATE, **RESAMPY_BEST)[:length]


def log_mel_examples(wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """VGGish's input: `wav` [T] or [C, T] -> [N, 96, 64] log-mel examples, N = frames // 96."""
    frames = log_mel(to_mono_16k(wav, sample_rate))  # [F, 64]
    count = frames.shape[0] // EXAMPLE_FRAMES
    return frames[:count * EXAMPLE_FRAMES].reshape(count, EXAMPLE_FRAMES, MEL_BANDS)


# ---------------------------------------------------------------- network


@dataclasses.dataclass(frozen=True)
class VGGishConfig(Config):
    """The network's widths: AudioSet's VGGish (``audioset``, torchvggish's weights) or a narrow
    one of the same layout (``demo``: 1.2 M parameters, trained as a classifier of the demo
    bundle's classes, `clipsonic.demo.embedding`)."""

    channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512)
    hidden: int = 4096
    embedding_size: int = EMBEDDING_SIZE

    PRESETS = {"audioset": {}, "demo": {"channels": (16, 32, 64, 64, 128, 128), "hidden": 256}}

    @property
    def flat_features(self) -> int:
        return self.channels[-1] * (EXAMPLE_FRAMES // 16) * (MEL_BANDS // 16)  # four poolings of [96, 64]


def _conv_stack(config: VGGishConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for index, width in enumerate(config.channels):
        layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        if index in POOLED_AFTER:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        channels = width
    return nn.Sequential(*layers)


def _single_channel_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 3x3 convolution of [B, 1, H, W] as one matmul over each pixel's 9 neighbours -> [B, C, H, W]
    in channels-last memory. oneDNN's direct kernel is several times slower for a single input
    channel and returns channels-first, which makes the max-pooling after it slow too."""
    batch, _, height, width = x.shape
    padded = F.pad(x[:, 0], (1, 1, 1, 1))  # [B, H + 2, W + 2]
    patches = padded.unfold(1, 3, 1).unfold(2, 3, 1).reshape(batch * height * width, 9)  # [BHW, 3*3]
    out = torch.addmm(conv.bias, patches, conv.weight.reshape(conv.out_channels, 9).t())  # [BHW, C]
    return out.reshape(batch, height, width, conv.out_channels).permute(0, 3, 1, 2)  # NHWC memory -> [B, C, H, W]


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """MaxPool2d(2) of [B, C, H, W] (even H, W) as two elementwise maxima of strided views: the
    same values, several times faster on CPU than the pooling kernel (which also finds indices)."""
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])


class VGGish(nn.Module):
    """The embedding network; `forward` maps examples [B, 96, 64] to raw embeddings [B, 128]."""

    def __init__(self, config: VGGishConfig = VGGishConfig()) -> None:
        super().__init__()
        self.config = config
        self.features = _conv_stack(config)
        # torchvggish ends with a ReLU too; FAD drops it, so it is applied on request only.
        self.embeddings = nn.Sequential(
            nn.Linear(config.flat_features, config.hidden), nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.embedding_size),
        )
        self.origin = "torchvggish"  # or "demo": which weights these are, said where a FAD is reported
        self.classes: tuple[str, ...] = ()  # a VGGish trained as a classifier: its classes and linear head
        self.head: tuple[torch.Tensor, torch.Tensor] | None = None
        # AudioSet's PCA: not part of the network's checkpoint, so kept out of the state dict.
        self.register_buffer("pca_eigen_vectors", None, persistent=False)
        self.register_buffer("pca_means", None, persistent=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.embeddings[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings[0].weight.device

    def _conv_blocks(self) -> list[tuple[nn.Conv2d, bool]]:
        """Each convolution of the stack, and whether max-pooling follows its ReLU."""
        layers = list(self.features)
        return [(layer, index + 2 < len(layers) and isinstance(layers[index + 2], nn.MaxPool2d))
                for index, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]

    def _convolutions(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pooled in self._conv_blocks():
            x = _single_channel_conv(x, conv) if conv.in_channels == 1 else conv(x)
            # Max-pooling commutes with ReLU (both are monotone): pooling first gives the same
            # values and leaves the ReLU a quarter of the work.
            x = torch.relu_(_max_pool_2x2(x) if pooled else x)
        return x

    def flat_features(self, examples: torch.Tensor) -> torch.Tensor:
        """Log-mel examples [B, 96, 64] (or [B, 1, 96, 64]) -> convolutional features [B, 12288]
        in TensorFlow's flatten order, in the network's dtype."""
        x = examples.reshape(-1, 1, EXAMPLE_FRAMES, MEL_BANDS)
        x = x.to(self.device, self.compute_dtype).contiguous(memory_format=torch.channels_last)
        x = self._convolutions(x)  # [B, 512, 6, 4]
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], self.config.flat_features)  # NCHW -> NHWC, then flatten

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """Log-mel examples [B, 96, 64] (or [B, 1, 96, 64]) -> embeddings [B, 128], float32,
        before the final ReLU."""
        return self.embeddings(self.flat_features(examples)).float()

    def postprocess(self, embeddings: torch.Tensor) -> torch.Tensor:
        """AudioSet's release format: ``round((clip(E (x - mean), -2, 2) + 2) * 255 / 4)`` with the
        PCA matrix E [128, 128] (rows are output dimensions) -> [N, 128] values 0..255, float32."""
        if self.pca_eigen_vectors is None:
            raise ClipsonicError("VGGish has no PCA parameters: pass pca_path to load_vggish")
        pca = (embeddings.float() - self.pca_means) @ self.pca_eigen_vectors.t()
        scale = 255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)
        return torch.round((pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX) - QUANTIZE_MIN) * scale)

    def _finish(self, raw: torch.Tensor, relu: bool, pca: bool) -> torch.Tensor:
        out = torch.relu(raw) if relu else raw
        return self.postprocess(out) if pca else out

    @torch.inference_mode()
    def embed_examples(self, examples: torch.Tensor, *, batch_size: int = DEFAULT_BATCH, relu: bool = False,
                       pca: bool = False) -> torch.Tensor:
        """Examples [N, 96, 64] -> embeddings [N, 128] (float32).

        The convolutions take `batch_size` examples at a time (their activations then stay in
        cache); the linear layers take up to LINEAR_BATCH, so that their 200 MB of weights are
        read from memory fewer times.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if examples.shape[0] == 0:
            return torch.zeros(0, self.config.embedding_size, device=self.device)
        features = torch.cat([self.flat_features(chunk) for chunk in examples.split(batch_size)])
        raw = torch.cat([self.embeddings(chunk).float() for chunk in features.split(max(batch_size, LINEAR_BATCH))])
        return self._finish(raw, relu, pca)

    def embed(self, wav: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE, *, relu: bool = False,
              pca: bool = False, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """One clip `wav` [T] or [C, T] -> embeddings [N, 128], one per whole 0.96 s of audio
        (none for a clip under 0.975 s). See the module docstring for `relu` and `pca`."""
        examples = log_mel_examples(torch.as_tensor(wav).to(self.device), sample_rate)
        return self.embed_examples(examples, batch_size=batch_size, relu=relu, pca=pca)

    def embed_clips(self, wavs: Sequence[torch.Tensor | np.ndarray], sample_rate: int = SAMPLE_RATE, *,
                    relu: bool = False, pca: bool = False, batch_size: int = DEFAULT_BATCH) -> list[torch.Tensor]:
        """Many clips at once: their examples share network batches. Returns one [N_i, 128] per clip;
        ``torch.cat`` them for the Fréchet distance, as frechet-audio-distance does."""
        examples = [log_mel_examples(torch.as_tensor(wav).to(self.device), sample_rate) for wav in wavs]
        if not examples:
            return []
        embeddings = self.embed_examples(torch.cat(examples), batch_size=batch_size, relu=relu, pca=pca)
        return list(embeddings.split([len(e) for e in examples]))

    def fad_embeddings(self, wavs: Sequence[torch.Tensor | np.ndarray], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """What a Fréchet audio distance compares: every 0.96-s example of every clip (float32 or
        float64 waveforms), embedded as `embed` does and stacked [N, 128], float64 on the CPU."""
        clips = self.embed_clips([torch.as_tensor(np.asarray(wav, dtype=np.float32)) for wav in wavs], sample_rate)
        return np.concatenate([clip.float().cpu().numpy() for clip in clips]).astype(np.float64)


# ---------------------------------------------------------------- checkpoints


def _numpy_safe_globals() -> list:
    """What a pickled float NumPy array refers to: its reconstructor (under NumPy 1's and 2's module
    names, as torch.save wrote them), ndarray, dtype and the float dtype classes. None of them can
    import or call anything else while unpickling."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    allowed = [(_reconstruct, "numpy.core.multiarray._reconstruct"),
               (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype]
    return allowed + [type(np.dtype(kind)) for kind in ("float16", "float32", "float64")]


def _pca_tensor(payload: dict, name: str, source: Path) -> torch.Tensor:
    value = payload[name]
    if not isinstance(value, (np.ndarray, torch.Tensor)) or not (
            value.dtype.kind == "f" if isinstance(value, np.ndarray) else value.is_floating_point()):
        raise CheckpointError(f"{source}: '{name}' is not a floating-point array")
    return torch.as_tensor(value).float()


def load_pca_params(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The AudioSet PCA (``vggish_pca_params-970ea276.pth``: ``pca_eigen_vectors`` [128, 128] and
    ``pca_means`` [128] or [128, 1], NumPy arrays or tensors) -> (matrix [128, 128], means [128]),
    float32. The pickle is read with torch's weights-only unpickler, NumPy float arrays allowed."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such PCA parameter file")
    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:
        raise CheckpointError(f"{source}: reading NumPy arrays without running pickled code needs torch >= 2.5")
    with allow(_numpy_safe_globals()):
        payload = safe_torch_load(source)
    if not isinstance(payload, dict) or not {"pca_eigen_vectors", "pca_means"} <= set(payload):
        raise CheckpointError(f"{source}: not VGGish PCA parameters (needs 'pca_eigen_vectors' and 'pca_means')")
    matrix, means = _pca_tensor(payload, "pca_eigen_vectors", source), _pca_tensor(payload, "pca_means", source)
    if tuple(matrix.shape) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.numel() != EMBEDDING_SIZE:
        raise CheckpointError(f"{source}: PCA parameters of shapes {tuple(matrix.shape)} and {tuple(means.shape)}, "
                              f"expected ({EMBEDDING_SIZE}, {EMBEDDING_SIZE}) and ({EMBEDDING_SIZE},)")
    return matrix, means.reshape(EMBEDDING_SIZE)


@dataclasses.dataclass(frozen=True)
class VGGishClassifier:
    """A VGGish trained as a classifier (the demo bundle's): the network, its class names and a
    linear head on the raw embedding (logits = head_weight @ embedding + head_bias)."""

    vggish: VGGish
    classes: tuple[str, ...]
    head_weight: torch.Tensor  # [classes, embedding]
    head_bias: torch.Tensor  # [classes]

    @torch.inference_mode()
    def predict(self, wavs: Sequence[torch.Tensor | np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[str]:
        """The class of each clip: the largest logit averaged over its 0.96-s examples."""
        embeddings = self.vggish.embed_clips(wavs, sample_rate)
        head_weight, head_bias = self.head_weight.to(self.vggish.device), self.head_bias.to(self.vggish.device)
        return [self.classes[int((e @ head_weight.t() + head_bias).mean(dim=0).argmax())] for e in embeddings]


def save_vggish(path: str | os.PathLike, model: VGGish) -> Path:
    """Our checkpoint of a VGGish (float32), with its classifier head when it has one."""
    state = {k: v.float() for k, v in model.state_dict().items()}
    extra = {"classes": list(model.classes), "origin": model.origin}
    if model.head is not None:
        extra.update(head_weight=model.head[0].detach().float().cpu(), head_bias=model.head[1].detach().float().cpu())
    return save_checkpoint(path, CHECKPOINT_KIND, model.config, state, version=CHECKPOINT_VERSION, extra=extra)


def _prepared(model: VGGish, dtype: torch.dtype | None, device: torch.device | str) -> VGGish:
    network_dtype = dtype or torch.float32
    model.features.to(network_dtype)
    model.embeddings.to(network_dtype)
    # oneDNN's and cuDNN's fast convolutions use channels-last (NHWC) weights and activations.
    return model.to(device, memory_format=torch.channels_last).eval()


def classifier(model: VGGish) -> VGGishClassifier:
    """The classifier a VGGish checkpoint of ours carries (`save_vggish` of a model with a head)."""
    if model.head is None:
        raise CheckpointError("this VGGish has no classifier head (only the demo bundle's VGGish has one)")
    return VGGishClassifier(model, model.classes, *model.head)


def _ours(payload: dict, source: Path) -> VGGish:
    model = VGGish(VGGishConfig.from_dict(payload["config"]))
    load_state_dict_strict(model, payload["state_dict"], source)
    extra = payload["extra"]
    model.origin, model.classes = str(extra.get("origin", "clipsonic")), tuple(extra.get("classes", ()))
    if "head_weight" in extra:
        model.head = (extra["head_weight"].float(), extra["head_bias"].float())
    return model


def load_vggish(path: str | os.PathLike, pca_path: str | os.PathLike | None = None, *,
                dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> VGGish:
    """VGGish in eval mode from torchvggish's state dict (``vggish-10086976.pth``), loaded strictly,
    or from one of our VGGish checkpoints (`save_vggish`: the demo bundle's ``vggish.pt``).

    `pca_path`: the AudioSet PCA parameters, needed only for ``embed(..., pca=True)``.
    `dtype`: the network's compute precision. float32 by default; bfloat16 was 7.8x faster on a
    CPU with AMX (benchmarks/fad_vs_reference.py) and moved embeddings by ~6e-3 relative and
    FAD by ~1e-3. The front end and the PCA always run in float32.
    """
    source = Path(path)
    state = safe_torch_load(source)
    if isinstance(state, dict) and str(state.get("format", "")).startswith(FORMAT_PREFIX):
        model = _ours(load_checkpoint(source, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION), source)
    else:
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{source}: not a VGGish state dict (expected a dict of tensors)")
        model = VGGish()
        load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, source)
    if pca_path is not None:
        model.pca_eigen_vectors, model.pca_means = load_pca_params(pca_path)
    return _prepared(model, dtype, device)
