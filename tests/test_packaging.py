"""The wheel carries every subpackage, the assets, csrc/ and weights/; a non-editable install runs
the README's main command from anywhere."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("clipsonic-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ["clipsonic/cli/__init__.py", "clipsonic/__main__.py", "clipsonic/assets/mel_filters.npz",
                     "clipsonic/weights/manifest.json", "clipsonic/csrc/README.md", "clipsonic/csrc/anti_alias_cpu.cpp",
                     "clipsonic/csrc/anti_alias_cuda.cu", "clipsonic/csrc/anti_alias_cuda.cpp", "clipsonic/csrc/group_norm_cpu.cpp",
                     "clipsonic/assets/bpe_simple_vocab_16e6.txt.gz", "clipsonic/weights/demo/clip.pt",
                     "clipsonic/weights/demo/unet.pt", "clipsonic/weights/demo/prior.pt", "clipsonic/weights/demo/tta.pt",
                     "clipsonic/weights/demo/demo.json"]:
        assert required in names, required
    packages = {str(path.parent.relative_to(ROOT)) for path in (ROOT / "clipsonic").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names  # every subpackage, found not listed
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [line.split()[1] for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    stripped = {r.split(">")[0].split("=")[0].split("<")[0] for r in requires}
    assert stripped == {"torch", "numpy", "soundfile", "ninja", "triton", "ftfy", "regex", "tqdm"}


@pytest.mark.slow
def test_non_editable_install_runs_from_another_folder(wheel, tmp_path):
    # A fresh environment without the runtime dependencies: the CLI shell and `weights list`
    # must not need torch, which also shows that they import nothing heavy.
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clipsonic = env_dir / "bin" / "clipsonic"
    help_run = subprocess.run([clipsonic, "--help"], cwd=elsewhere, capture_output=True, text=True)
    assert help_run.returncode == 0 and "weights" in help_run.stdout
    listing = subprocess.run([clipsonic, "weights", "list"], cwd=elsewhere, capture_output=True, text=True)
    assert listing.returncode == 0 and "clip-vit-l-14" in listing.stdout, listing.stderr
    where = subprocess.run([python, "-c", "import clipsonic.manifest as m; print(m.shipped_folder())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True)
    assert str(env_dir) in where.stdout
    module_run = subprocess.run([python, "-m", "clipsonic", "--version"], cwd=elsewhere, capture_output=True, text=True)
    assert module_run.returncode == 0 and module_run.stdout.startswith("clipsonic ")


def readme_main_command() -> list[str]:
    """The README's main command, as the README writes it (the first `clipsonic sample` line)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("clipsonic sample --text"))
    import shlex

    return shlex.split(line.split("#")[0])


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_readme_main_command(wheel, tmp_path):
    """The install steps the README gives, as a new user takes them: the wheel alone (--no-deps) in a
    fresh venv that sees this interpreter's torch and friends, then the main command from an empty
    folder; the WAV it writes must play: 16 kHz, >= 3 s, finite, not silent, peak <= 1."""
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import clipsonic, clipsonic.ops; print(clipsonic.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True)
    assert str(env_dir) in where.stdout  # the wheel's copy, not the checkout's
    command = readme_main_command()
    assert command[:2] == ["clipsonic", "sample"]
    done = subprocess.run([env_dir / "bin" / "clipsonic", *command[1:]], cwd=elsewhere, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    output = elsewhere / command[command.index("-o") + 1]
    wav, rate = soundfile.read(output)
    assert rate == 16000 and len(wav) >= 3 * rate and np.isfinite(wav).all()
    assert np.sqrt(np.mean(wav ** 2)) > 1e-3 and np.abs(wav).max() <= 1.0
