"""The wheel carries the assets, csrc/ and weights/; a non-editable install runs from anywhere."""

import subprocess
import sys
import venv
import zipfile

import pytest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(root)], check=True, capture_output=True)
    (path,) = out.glob("clipsonic-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ["clipsonic/cli.py", "clipsonic/__main__.py", "clipsonic/assets/mel_filters.npz",
                     "clipsonic/weights/manifest.json", "clipsonic/csrc/README.md", "clipsonic/csrc/anti_alias_cpu.cpp",
                     "clipsonic/csrc/anti_alias_cuda.cu", "clipsonic/csrc/anti_alias_cuda.cpp", "clipsonic/csrc/group_norm_cpu.cpp",
                     "clipsonic/assets/bpe_simple_vocab_16e6.txt.gz", "clipsonic/weights/demo/clip.pt",
                     "clipsonic/weights/demo/unet.pt", "clipsonic/weights/demo/prior.pt",
                     "clipsonic/weights/demo/demo.json"]:
        assert required in names, required
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
