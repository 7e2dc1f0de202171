import hashlib
import json
import re
import subprocess
import sys

import pytest

from clipsonic import cli, manifest


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipsonic", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_help_lists_only_built_commands():
    done = run_cli("--help")
    assert done.returncode == 0
    commands = done.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = {line.split()[0] for line in commands.splitlines() if re.match(r"^    \S", line)}
    assert listed == {"make-demo-data", "demo", "preprocess", "train", "train-prior", "train-vocoder", "sample", "eval",
                      "bundle", "weights", "bench", "listen"}


def test_weights_list_shows_every_entry_with_source_and_licence(tmp_path):
    done = run_cli("weights", "list", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for entry in manifest.load_manifest().values():
        assert entry.name in done.stdout and entry.source in done.stdout and entry.licence in done.stdout
    assert "missing" in done.stdout and str(tmp_path) in done.stdout


def test_shipped_manifest_is_complete():
    entries = manifest.load_manifest()
    assert {"clip-vit-l-14", "dalle2-prior-laion", "vggish"} <= set(entries)
    for entry in entries.values():
        assert entry.licence and (entry.sha256 is None or len(entry.sha256) == 64)
        if entry.shipped:  # the demo bundle: pinned by `demo --retrain`
            assert entry.sha256 and entry.size and "demo --retrain" in entry.source
        else:
            assert entry.source.startswith("https://")
    assert entries["vggish"].sha256.startswith("10086976")  # torch.hub names carry the prefix


def write_manifest(folder, **entries):
    records = {name: {"kind": "test", "file": f"{name}.bin", "source": f"https://example.org/{name}.bin",
                      "licence": "MIT", "description": "a test file", **record} for name, record in entries.items()}
    path = folder / "manifest.json"
    path.write_text(json.dumps({"version": 1, "weights": records}))
    return path


def test_verify_outcomes(tmp_path):
    (tmp_path / "good.bin").write_bytes(b"good bytes")
    (tmp_path / "bad.bin").write_bytes(b"tampered")
    (tmp_path / "loose.bin").write_bytes(b"anything")
    (tmp_path / "prefixed.bin").write_bytes(b"prefixed")
    good_sha = hashlib.sha256(b"good bytes").hexdigest()
    entries = manifest.load_manifest(write_manifest(
        tmp_path, good={"sha256": good_sha}, bad={"sha256": good_sha}, loose={},
        prefixed={"sha256_prefix": hashlib.sha256(b"prefixed").hexdigest()[:8]}, absent={"sha256": good_sha}))
    results = {name: manifest.verify(entry, [tmp_path]) for name, entry in entries.items()}
    assert {name: r.status for name, r in results.items()} == {
        "good": "ok", "bad": "mismatch", "loose": "unpinned", "prefixed": "ok", "absent": "missing"}
    assert hashlib.sha256(b"anything").hexdigest() in results["loose"].detail
    assert results["bad"].failed and not results["loose"].failed


def test_verify_cli_exit_codes(tmp_path):
    (tmp_path / "ViT-L-14.pt").write_bytes(b"not the real CLIP")
    done = run_cli("weights", "verify", "--dir", str(tmp_path))
    assert done.returncode == 1
    checked = re.escape(str(tmp_path / "ViT-L-14.pt"))
    assert re.search(rf"^clip-vit-l-14\s+mismatch\s+{checked}: sha256 [0-9a-f]{{64}} but", done.stdout, re.M)
    assert done.stderr.strip() == "clipsonic: error: 1 weight file(s) failed verification: clip-vit-l-14"
    named_missing = run_cli("weights", "verify", "vggish", "--dir", str(tmp_path))
    assert named_missing.returncode == 1 and "vggish" in named_missing.stderr
    nothing_present = run_cli("weights", "verify", "--dir", str(tmp_path / "empty"))
    assert nothing_present.returncode == 0


@pytest.mark.parametrize("args,code,fragment", [
    (["weights", "lst"], 2, "invalid choice: 'lst'"),
    (["--dtype", "fp64", "weights", "list"], 2, "invalid choice: 'fp64'"),
    (["weights", "verify", "nonesuch"], 1, "unknown weight name(s) nonesuch"),
    (["--device", "tpu", "weights", "list"], 2, "--device tpu: expected auto, cpu, cuda, cuda:N or mps"),
    (["weights", "list", "--threads", "0"], 2, "--threads 0: must be at least 1"),
    (["--seed", "x", "weights", "list"], 2, "argument --seed: 'x' is not an integer"),
])
def test_user_errors_are_one_line_without_traceback(args, code, fragment):
    done = run_cli(*args)
    assert done.returncode == code
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback():
    done = run_cli("--debug", "weights", "verify", "nonesuch")
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_common_options_before_or_after_the_command(capsys):
    assert cli.main(["--quiet", "weights", "list"]) == 0
    assert cli.main(["weights", "list", "--seed", "3", "--threads", "1", "-v"]) == 0
    assert "clip-vit-l-14" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: clipsonic" in capsys.readouterr().err


def test_library_never_imports_the_cli():
    code = ("import sys, clipsonic, clipsonic.audio, clipsonic.media, clipsonic.checkpoint, clipsonic.manifest;"
            "print('clipsonic.cli' in sys.modules, 'triton' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_import_clip_converts_and_verifies(tmp_path):
    from conftest import FIXTURES

    out = tmp_path / "converted.pt"
    done = run_cli("weights", "import-clip", str(FIXTURES / "clip_tiny_torchscript.pt"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "openai-torchscript layout" in done.stdout and "reloads identically" in done.stdout
    from clipsonic.checkpoint import load_checkpoint

    assert load_checkpoint(out, "clip")["config"]["vision_width"] == 64
    failed = run_cli("weights", "import-clip", str(tmp_path / "missing.pt"))
    assert failed.returncode == 1 and failed.stderr.strip().endswith("missing.pt: no such CLIP checkpoint")


def test_bench_clip_prints_ratios(tmp_path):
    out = tmp_path / "bench.json"
    done = run_cli("bench", "clip", "--preset", "tiny", "--batch", "1", "--repeat", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "| clip.encode_image | 1 | bf16 |" in done.stdout
    rows = json.loads(out.read_text())
    assert [row["dtype"] for row in rows] == ["fp32", "bf16"] and rows[1]["ratio"] > 0


def test_bench_vocoder(tmp_path):
    out = tmp_path / "vocoder.json"
    done = run_cli("bench", "vocoder", "--preset", "tiny", "--seconds", "0.25", "--repeat", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert any("(C++)" in row["name"] and row["ratio"] > 0 for row in rows)
    assert any(row["name"].startswith("BigVGAN tiny") and row["dtype"] == "bf16" for row in rows)


def test_bench_ops_on_cpu(tmp_path):
    out = tmp_path / "ops.json"
    done = run_cli("bench", "ops", "--device", "cpu", "--precisions", "bf16", "--preset", "tiny", "--frames", "16",
                   "--repeat", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "attention skipped on cpu" in done.stderr
    rows = json.loads(out.read_text())
    assert any("(C++)" in row["name"] and row["unit"] == "GB/s" and row["throughput"] > 0 for row in rows)
    assert any(row["name"].startswith("unet tiny step") and row["ratio"] > 0 for row in rows)


def test_bench_clap(tmp_path):
    out = tmp_path / "clap.json"
    done = run_cli("bench", "clap", "--preset", "tiny", "--clips", "3", "--batch", "2", "--seconds", "1",
                   "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [row["dtype"] for row in rows] == ["fp32", "bf16"] and "reference: clipsonic fp32" in rows[0]["name"]
    assert rows[1]["ratio"] > 0 and rows[1]["agreement"] > 0.99
    for args, message in ((["--seconds", "12"], "--seconds 12: must be more than 0 and at most 10"),
                          (["--reference-python", str(tmp_path / "none")], "no such file"),
                          (["--reference-python", sys.executable], "not --preset tiny")):
        refused = run_cli("bench", "clap", "--preset", "tiny", *args)
        assert refused.returncode == 2 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_bench_preprocess(tmp_path):
    out = tmp_path / "pre.json"
    done = run_cli("bench", "preprocess", "--clip-preset", "tiny", "--clips", "2", "--seconds", "2.5",
                   "--workers", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [row["dtype"] for row in rows] == ["fp32", "bf16"] and rows[1]["ratio"] > 0 and "clips/s" in rows[1]["name"]


def test_building_the_parser_imports_no_torch():
    """`clipsonic --help` and every command's options (the trainers' come from TrainConfig) need no torch."""
    code = "import sys, clipsonic.cli as cli; cli.build_parser(); print('torch' in sys.modules, 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
