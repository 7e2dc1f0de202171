"""Test markers and shared helpers: `slow` tests run in CI too; `cuda` tests need a GPU."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _reset_cli_state():
    """`cli.main` configures the clipsonic logger for a terminal and `--threads` sets torch's thread
    count for the process; undo both (caplog must see records, and a test that ran `--threads 1`
    once made every later test run on one core)."""
    import torch

    threads = torch.get_num_threads()
    yield
    logger = logging.getLogger("clipsonic")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory):
    """A random-weight tiny CLIP checkpoint (text width = embedding size, as the prior needs)."""
    import torch

    from clipsonic.clip import CLIP, CLIPConfig, save_clip

    torch.manual_seed(0)
    config = CLIPConfig.preset("tiny").replace(text_width=64)
    return save_clip(tmp_path_factory.mktemp("clip") / "tiny-clip.pt", CLIP(config).eval())


@pytest.fixture(scope="session")
def clip_model(clip_file):
    from clipsonic.clip import load_clip

    return load_clip(clip_file)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def make_video(path: Path, *, seconds: float = 3.0, audio: bool = True, fps: int = 25,
               size: str = "64x48", sample_rate: int = 16000, channels: int = 1,
               video_codec: str = "libx264", audio_codec: str = "aac", extra: list[str] | None = None) -> Path:
    """A small test video made with ffmpeg's lavfi sources (a test pattern and a 440 Hz sine)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    args = [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}",
                 "-ac", str(channels), "-c:a", audio_codec]
    args += ["-t", f"{seconds}", "-c:v", video_codec, "-pix_fmt", "yuv420p", *(extra or []), str(path)]
    subprocess.run(args, check=True)
    return path


def require_extension(module):
    """A built extension module, or: fail in CI (the toolchain is installed there), skip elsewhere."""
    if module is None:
        if os.environ.get("CI"):
            pytest.fail("the C++ extension must build in CI (compiler, ninja and Python headers are installed)")
        pytest.skip("no C++ toolchain to build the extension")
    return module
