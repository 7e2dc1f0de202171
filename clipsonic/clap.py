"""LAION-CLAP (Wu, Chen et al., 2023): audio and text embeddings in one space, for the CLAP score.

Re-derived from the PyPI wheel ``laion_clap`` 1.1.7 (CC0): ``hook.py``
(``get_audio_embedding_from_data``, ``get_text_embedding``), ``training/data.py``
(``get_audio_features``, ``get_mel``) and ``clap_module/model.py``; the networks live in
`clipsonic.htsat` (audio, HTSAT-tiny) and `clipsonic.roberta` (text, roberta-base). LAION's
checkpoints (``630k-audioset-fusion-best.pt`` and the other ``630k-*.pt``) load strictly
under their own key names.

Audio, as ``get_audio_embedding_from_data(x, use_tensor=False)`` prepares it:

1. resampled to 48 kHz (`clipsonic.resample.resample`; upstream's files go through librosa);
2. quantised to 16 bits: clipped to [-1, 1], times 32767, truncated to int16, divided by 32767;
3. 10 s = 480 000 samples at most. A shorter clip is repeated (whole copies) and zero-padded
   to 10 s; a longer one takes, without fusion, a 10-s crop, and with fusion (below) three
   10-s chunks. Upstream draws crops and chunks at random; here they come from `seed`, and
   depend on nothing else than the seed and the clip's length;
4. log-mel [1001, 64]: STFT of 1024 samples (periodic Hann window) every 480, centred with
   reflection, power 2, 64 mel bands from 50 Hz to 14 kHz, ``10 log10(max(x, 1e-10))``
   (no reference subtraction, no dynamic-range cut). Fusion models use torchaudio's
   ``MelSpectrogram`` filters (HTK mel scale, no area normalisation); non-fusion models
   torchlibrosa's ``LogmelFilterBank``, which are librosa's defaults (Slaney scale and area
   normalisation, `clipsonic.melfilters`);
5. fusion, for a clip whose log-mel has more than 1001 frames: channel 0 is the whole log-mel
   shrunk to 1001 frames (torchvision's ``Resize``: bilinear, antialiased), channels 1-3 are
   1001-frame chunks starting one in each third of the possible starts; a clip of 1001
   frames or fewer (10.01 s at most) feeds channel 0 only, as a non-fusion model does.

HTSAT maps that to 768 features, ``audio_projection`` (Linear 768->512, ReLU, Linear
512->512) to the joint space. Text: roberta-base's pooler output (the ``<s>`` token, dense +
tanh) through ``text_projection`` of the same shape. Both embeddings are L2-normalised; the
CLAP score of a pair is their dot product (`clap_score`). ``logit_scale_a`` and
``logit_scale_t`` load with the rest but no embedding uses them.

Keys of LAION's layout that no embedding reads are dropped by name (`UNUSED_KEYS`), every
other key must fill a parameter of this model and every parameter must be filled. `save_clap`
writes our checkpoint (the same keys, with the model's config, so that any size loads by path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipsonic.checkpoint import checked_payload, is_ours, load_state_dict_strict, safe_torch_load, save_checkpoint
from clipsonic.config import Config
from clipsonic.errors import CheckpointError, ClipsonicError
from clipsonic.htsat import FUSION_CHUNKS, HTSAT, HTSATConfig
from clipsonic.melfilters import mel_filterbank as slaney_filterbank
from clipsonic.nn import set_precision
from clipsonic.resample import resample
from clipsonic.roberta import RobertaConfig, RobertaModel, RobertaTokenizer

CHECKPOINT_KIND, CHECKPOINT_VERSION = "clap", 1  # our own files (`save_clap`)
INT16_SCALE = 32767.0  # upstream's float32 <-> int16 factor (not 32768)
LOG_FLOOR = 1e-10  # torchaudio's AmplitudeToDB amin, torchlibrosa's amin
FUSION_KEY = "audio_branch.patch_embed.mel_conv2d.weight"
# The layout's keys that no embedding reads: fixed STFT and mel matrices (recomputed here), the
# AudioSet tagging head, the MLPs of the training loss, Swin's constant window masks and
# relative-position indices (recomputed), and the position ids 0..513 that transformers < 4.31 saved.
UNUSED_KEYS = re.compile(
    r"^audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\."
    r"|^(audio|text)_transform\."
    r"|\.(attn_mask|relative_position_index)$"
    r"|^text_branch\.embeddings\.position_ids$")


@dataclasses.dataclass(frozen=True)
class CLAPConfig(Config):
    """Model sizes and the audio front end. The defaults (preset ``htsat-tiny``) are LAION's
    HTSAT-tiny + roberta-base with fusion, the ``630k-audioset-fusion-best.pt`` model."""

    audio: HTSATConfig = HTSATConfig()
    text: RobertaConfig = RobertaConfig()
    joint_dim: int = 512
    sample_rate: int = 48000
    clip_samples: int = 480000
    n_fft: int = 1024
    hop_length: int = 480
    fmin: float = 50.0
    fmax: float = 14000.0
    context_length: int = 77

    PRESETS = {
        "htsat-tiny": {},
        "tiny": {"audio": HTSATConfig.PRESETS["tiny"], "text": RobertaConfig.PRESETS["tiny"], "joint_dim": 32},
    }

    def __post_init__(self) -> None:
        # The last real token sits at position context_length + pad_token_id.
        if self.text.max_position_embeddings <= self.context_length + self.text.pad_token_id:
            raise ValueError(f"{self.text.max_position_embeddings} position embeddings cannot hold a context "
                             f"of {self.context_length}")

    @property
    def clip_frames(self) -> int:
        """Log-mel frames of one 10-s clip (centred STFT): 1001."""
        return self.clip_samples // self.hop_length + 1


# ---------------------------------------------------------------- audio front end


def quantize_int16(wav: torch.Tensor) -> torch.Tensor:
    """Upstream's float32 -> int16 -> float32 round trip (truncation toward zero)."""
    return (wav.float().clamp(-1.0, 1.0) * INT16_SCALE).to(torch.int16).float() / INT16_SCALE


def repeat_pad(wav: torch.Tensor, length: int) -> torch.Tensor:
    """[B, T] with T <= length -> [B, length]: whole repeats of the clip, then zeros."""
    repeats = length // wav.shape[-1]
    return F.pad(wav.repeat(1, repeats), (0, length - repeats * wav.shape[-1]))


@lru_cache(maxsize=4)
def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")`` [n_fft // 2 + 1, n_mels], float64:
    band edges evenly spaced in 2595 log10(1 + f / 700) from `fmin` to `fmax`, triangles of
    peak 1 over the bin frequencies ``linspace(0, sample_rate // 2, bins)``."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    bins_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    edges = 700.0 * (10.0 ** (np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    to_edge = edges[None, :] - bins_hz[:, None]  # [bins, n_mels + 2]
    widths = np.diff(edges)
    rising = -to_edge[:, :-2] / widths[:-1]
    falling = to_edge[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.setflags(write=False)
    return bank


def mel_filterbank(config: CLAPConfig) -> np.ndarray:
    """[n_fft // 2 + 1, mel_bins] float64: HTK filters for fusion models, librosa's for the others."""
    args = (config.sample_rate, config.n_fft, config.audio.mel_bins, config.fmin, config.fmax)
    return htk_mel_filterbank(*args) if config.audio.fusion else slaney_filterbank(*args).T


def log_mel(wav: torch.Tensor, config: CLAPConfig) -> torch.Tensor:
    """48-kHz clips [B, T] -> log-mels [B, 1 + T // hop, mel_bins], float32."""
    n = torch.arange(config.n_fft, dtype=torch.float64)
    # Built in float64 and cast: float32 cosines differ in the last bits between backends.
    window = (0.5 - 0.5 * torch.cos(2 * math.pi * n / config.n_fft)).to(wav.device, torch.float32)
    spectrum = torch.stft(wav.float(), config.n_fft, config.hop_length, window=window, center=True,
                          pad_mode="reflect", return_complex=True).abs().square()  # [B, bins, frames]
    bank = torch.from_numpy(np.array(mel_filterbank(config))).to(wav.device, torch.float32)  # [bins, mel_bins]
    return 10.0 * torch.log10((spectrum.transpose(1, 2) @ bank).clamp(min=LOG_FLOOR))  # B bins T -> B T mel_bins


def fusion_chunk_starts(total_frames: int, chunk_frames: int, seed: int) -> tuple[int, ...]:
    """First frames of the three fusion chunks: the possible starts 0 .. total - chunk are split
    into three near-equal runs (``np.array_split``; an empty run becomes [0]) and one start is
    drawn from each with NumPy's PCG64 seeded by `seed`."""
    rng = np.random.default_rng(seed)
    runs = [run if len(run) else np.zeros(1, dtype=np.int64)
            for run in np.array_split(np.arange(total_frames - chunk_frames + 1), FUSION_CHUNKS)]
    return tuple(int(run[rng.integers(len(run))]) for run in runs)


def crop_start(overflow: int, seed: int) -> int:
    """Where a non-fusion model's 10-s crop of a longer clip starts: 0 .. overflow, from `seed`."""
    return int(np.random.default_rng(seed).integers(overflow + 1))


def audio_input(wav: torch.Tensor, config: CLAPConfig, seed: int = 0) -> tuple[torch.Tensor, bool]:
    """Quantised 48-kHz clips [B, T] -> HTSAT's input [B, C, clip_frames, mel_bins] and whether it is
    fused (C = 4) or not (C = 1). See the module docstring."""
    clip, frames = config.clip_samples, config.clip_frames
    if wav.shape[-1] > clip and not config.audio.fusion:
        start = crop_start(wav.shape[-1] - clip, seed)
        wav = wav[:, start:start + clip]
    if wav.shape[-1] <= clip:
        return log_mel(repeat_pad(wav, clip), config)[:, None], False
    mel = log_mel(wav, config)  # [B, total, mel_bins]
    if mel.shape[1] == frames:  # under one hop longer than 10 s: the whole clip, unfused
        return mel[:, None], False
    starts = fusion_chunk_starts(mel.shape[1], frames, seed)
    shrunk = F.interpolate(mel[:, None], size=(frames, mel.shape[-1]), mode="bilinear", align_corners=False,
                           antialias=True)  # [B, 1, frames, mel_bins]
    chunks = torch.stack([mel[:, start:start + frames] for start in starts], dim=1)  # [B, 3, frames, mel_bins]
    return torch.cat([shrunk, chunks], dim=1), True


# ---------------------------------------------------------------- model


def _projection(width: int, joint: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, joint), nn.ReLU(), nn.Linear(joint, joint))


class CLAP(nn.Module):
    """HTSAT + RoBERTa with their projections. `tokenizer` is needed by `embed_text` only."""

    def __init__(self, config: CLAPConfig, tokenizer: RobertaTokenizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.audio_branch = HTSAT(config.audio)
        self.text_branch = RobertaModel(config.text)
        self.audio_projection = _projection(config.audio.num_features, config.joint_dim)
        self.text_projection = _projection(config.text.hidden_size, config.joint_dim)
        self.logit_scale_a = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_scale_t = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale_a.device

    def encode_audio(self, mel: torch.Tensor, fused: bool) -> torch.Tensor:
        """HTSAT input from `audio_input` -> joint-space audio features [B, joint_dim], float32, not normalised."""
        features = self.audio_branch(mel.to(self.device), fused)
        return self.audio_projection(features.to(self.audio_projection[0].weight.dtype)).float()

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and attention masks [B, L] -> joint-space text features [B, joint_dim], float32, not normalised."""
        pooled = self.text_branch(ids.to(self.device), attention_mask.to(self.device))
        return self.text_projection(pooled).float()

    @torch.inference_mode()
    def embed_audio(self, wav: torch.Tensor, sample_rate: int = 16000, *, seed: int = 0) -> torch.Tensor:
        """Clips `wav` [B, T] (floats in [-1, 1], mono) at `sample_rate` -> L2-normalised embeddings
        [B, joint_dim], float32. `seed` picks the crop or fusion chunks of clips longer than 10 s."""
        wav = torch.as_tensor(wav)
        if wav.dim() != 2 or not wav.is_floating_point():
            raise ValueError(f"embed_audio expects float clips [B, T], got {wav.dtype} {tuple(wav.shape)}")
        if wav.shape[0] == 0 or wav.shape[1] == 0:
            raise ValueError(f"embed_audio got no audio (shape {tuple(wav.shape)})")
        wav = resample(wav.to(self.device, torch.float32), int(sample_rate), self.config.sample_rate)
        mel, fused = audio_input(quantize_int16(wav), self.config, seed)
        return F.normalize(self.encode_audio(mel, fused), dim=-1)

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings [B, joint_dim], float32."""
        if self.tokenizer is None:
            raise ClipsonicError("this CLAP has no tokenizer: load it with load_clap(path, tokenizer_dir)")
        if isinstance(texts, str) or not texts:
            raise ValueError("embed_text expects a non-empty list of texts")
        ids, mask = self.tokenizer(list(texts), self.config.context_length)
        return F.normalize(self.encode_text(ids, mask), dim=-1)


def clap_score(audio_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products [B] of normalised embeddings [B, D]: the cosine of each pair."""
    if audio_emb.shape != text_emb.shape or audio_emb.dim() != 2:
        raise ValueError(f"clap_score pairs [B, D] rows, got {tuple(audio_emb.shape)} and {tuple(text_emb.shape)}")
    return (audio_emb.float() * text_emb.float()).sum(dim=-1)


def set_clap_precision(model: CLAP, dtype: torch.dtype) -> CLAP:
    """Cast the networks to `dtype`, keeping LayerNorm and BatchNorm (and so their statistics) in float32."""
    set_precision(model, dtype)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.float()
    return model


# ---------------------------------------------------------------- checkpoints


def _numpy_scalar_globals() -> list:
    """What a pickled NumPy scalar refers to (LAION's training loop stores each optimizer group's
    learning rate as a NumPy float): the scalar constructor under NumPy 1's and 2's module
    names, dtype and the dtype classes. None of them can import or call anything else."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    return allowed + [type(np.dtype(kind)) for kind in ("float16", "float32", "float64", "int64")]


def read_clap_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CLAPConfig | None]:
    """The state dict of a LAION-CLAP checkpoint (``{"state_dict": ..., "optimizer": ..., ...}``,
    or the bare state dict), ``module.`` prefixes removed, `UNUSED_KEYS` dropped; or of our
    checkpoint (`save_clap`) with its config (None for LAION's files, which carry none)."""
    source = Path(path)
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow(_numpy_scalar_globals()) if allow else contextlib.nullcontext():
        payload = safe_torch_load(source)
    if is_ours(payload):
        ours = checked_payload(payload, source, CHECKPOINT_KIND, max_version=CHECKPOINT_VERSION)
        return ours["state_dict"], CLAPConfig.from_dict(ours["config"])
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: not a LAION-CLAP checkpoint (expected a dict of tensors, "
                              f"or a dict holding one under 'state_dict')")
    state = {key.removeprefix("module."): tensor for key, tensor in state.items()}
    if not any(key.startswith("audio_branch.") for key in state) or not any(key.startswith("text_branch.")
                                                                           for key in state):
        raise CheckpointError(f"{source}: not a LAION-CLAP checkpoint (no audio_branch.* and text_branch.* keys)")
    return {key: tensor for key, tensor in state.items() if not UNUSED_KEYS.search(key)}, None


def load_clap(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, *,
              config: CLAPConfig | str | None = None, dtype: torch.dtype | None = None,
              device: torch.device | str = "cpu") -> CLAP:
    """A CLAP in eval mode from a LAION-CLAP checkpoint, loaded strictly.

    `tokenizer_dir`: the folder with roberta-base's ``vocab.json`` and ``merges.txt`` (default:
    the checkpoint's folder). `config`: the model's sizes (a `CLAPConfig` or a preset name);
    by default our checkpoint's own, else HTSAT-tiny + roberta-base, with fusion when the
    checkpoint has fusion weights.
    `dtype`: float32 by default; there, on seeded random full-size weights, embeddings agreed
    with laion_clap's to 5e-6 (relative L2; tests/test_clap.py). bfloat16 runs the networks
    (not the front end, the norms or the pooling) in bfloat16; it moved the same embeddings by
    0.7-0.8 % (audio) and 1.0-1.5 % (text).
    """
    source = Path(path)
    tokenizer = RobertaTokenizer.from_dir(source.parent if tokenizer_dir is None else tokenizer_dir)
    state, own_config = read_clap_weights(source)
    if config is None:
        config = own_config or CLAPConfig.preset("htsat-tiny", audio={"fusion": FUSION_KEY in state})
    elif isinstance(config, str):
        config = CLAPConfig.preset(config)
    if tokenizer.max_id >= config.text.vocab_size or tokenizer.pad_id != config.text.pad_token_id:
        raise ClipsonicError(f"the tokenizer (ids up to {tokenizer.max_id}, <pad> = {tokenizer.pad_id}) does not fit "
                             f"the text encoder ({config.text.vocab_size} embeddings, pad {config.text.pad_token_id})")
    model = CLAP(config, tokenizer)
    load_state_dict_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source)
    set_clap_precision(model, dtype or torch.float32)
    return model.to(device).eval()


def save_clap(path: str | os.PathLike, model: CLAP) -> Path:
    """Our checkpoint of `model`: float32 weights under LAION's key names, and its config (the
    tokenizer files are not in it: `load_clap` reads them from a folder)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_checkpoint(path, CHECKPOINT_KIND, model.config, state, version=CHECKPOINT_VERSION)
