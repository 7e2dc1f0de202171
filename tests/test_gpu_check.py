"""benchmarks/gpu_check.py on CPU: the report it writes, the shapes it checks, and that a wrong kernel fails.

The Triton kernels run in Triton's interpreter, which must be on before they are defined: set
here before anything imports them, as tests/test_ops_triton.py does.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import ast  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from conftest import require_extension  # noqa: E402

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS.parent / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_cases():
    return gpu_check.model_cases(gpu_check.SIZES["small"])


@pytest.mark.slow
def test_cpu_run_writes_a_complete_report(tmp_path, small_cases):
    environment = {name: value for name, value in os.environ.items() if name != "CLIPSONIC_OPS"}
    environment["TRITON_INTERPRET"] = "1"
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert report["format"] == gpu_check.FORMAT and report["version"] == gpu_check.VERSION

    env = report["environment"]
    for key in ("date", "device", "driver", "nvidia_smi", "cuda", "torch", "triton", "cpu", "python", "mode"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["cpu"] and env["mode"] == "small" and env["triton_interpreter"]
    assert "no CUDA device" in env["device"]

    # Every recorded op call of every model, in both dtypes, forward and (where it trains) backward.
    rows = report["correctness"]
    expected = {(case.model, case.describe(), dtype, direction) for case in small_cases for dtype in ("fp32", "bf16")
                for direction in (("forward", "backward") if case.backward and case.op != "anti_alias_activation"
                                  else ("forward",))}
    assert {(row["model"], row["shape"], row["dtype"], row["direction"]) for row in rows} == expected
    assert len(rows) == len(expected)
    assert {row["model"].split(" (")[0] for row in rows} == {"unet train", "unet sample", "clip image", "clip text",
                                                            "prior", "bigvgan"}
    for row in rows:
        atol, rtol = (gpu_check.GRADIENT_TOLERANCE.get(row["dtype"]) if row["direction"] == "backward" else None) \
            or gpu_check.TOLERANCES[(row["op"], row["dtype"])]
        assert row["tolerance"] == {"atol": atol, "rtol": rtol}
        if row["impl"] == "triton":  # under the interpreter: really run, and passed
            assert row["status"] == "pass", row
            assert 0 <= row["worst_ratio"] <= 1 and math.isfinite(row["max_abs_error"])
        else:
            assert (row["impl"], row["status"], row["reason"]) == ("cuda", "skipped", "no CUDA device")
            assert row["worst_ratio"] is None
    assert report["summary"]["passed"] and report["summary"]["correctness"]["fail"] == 0

    # Speed rows: one per planned measurement, none faked on CPU.
    labels = [group.label for group in gpu_check.speed_groups(CPU, gpu_check.SIZES["small"], small_cases)]
    assert [row["name"] for row in report["speed"]] == labels
    for row in report["speed"]:
        assert (row["status"], row["reason"]) == ("skipped", "no CUDA device")
        assert all(row[key] is None for key in ("median_ms", "best_ms", "throughput", "ratio", "value"))
    assert {row["section"] for row in report["speed"]} >= {"ceilings", "attention", "group_norm",
                                                           "anti_alias_activation", "training", "sampling", "clip",
                                                           "bigvgan"}

    text = (tmp_path / gpu_check.MARKDOWN_NAME).read_text()
    assert text == gpu_check.markdown(report)
    assert "**PASSED: no correctness check failed**" in text and "| cpu | " in text and "| torch | " in text
    assert text.count("skipped: no CUDA device |") == len(report["speed"]) + sum(row["impl"] == "cuda" for row in rows)
    assert "**PASSED" in done.stdout


def test_full_run_checks_the_paper_models_shapes():
    """The shapes recorded from the paper presets are the ones DESIGN.md gives."""
    cases = gpu_check.model_cases(gpu_check.SIZES["full"])
    attention = {(case.model, case.layout("q")[0], case.layout("k")[0], case.option("causal")) for case in cases
                 if case.op == "attention"}
    assert attention == {
        ("unet train (32 x 64 x 64)", (32, 6, 256, 64), (32, 6, 256, 64), False),  # ds 4: 16 x 16, 384 ch
        ("unet train (32 x 64 x 64)", (32, 8, 64, 64), (32, 8, 64, 64), False),  # ds 8: 8 x 8, 512 ch
        ("unet sample (2 x 64 x 128)", (2, 6, 512, 64), (2, 6, 512, 64), False),
        ("unet sample (2 x 64 x 128)", (2, 8, 128, 64), (2, 8, 128, 64), False),
        ("clip image", (4, 16, 257, 64), (4, 16, 257, 64), False),
        ("clip text", (4, 12, 77, 64), (4, 12, 77, 64), True),
        ("prior", (2, 12, 81, 64), (2, 12, 82, 64), True),  # 77 tokens + 4, a null key in front
    }
    norms = [case for case in cases if case.op == "group_norm"]
    assert {case.option("num_groups") for case in norms} == {32}
    assert {case.layout("x")[0][1] for case in norms} >= {128, 256, 384, 512}
    assert any(case.layout("scale") and case.option("silu") for case in norms)
    assert all(case.backward == case.model.startswith("unet train") for case in cases)
    activations = {case.layout("x")[0] for case in cases if case.op == "anti_alias_activation"}
    assert activations == {(1, 256, 1024), (1, 128, 8192), (1, 64, 32768), (1, 32, 65536)}
    assert all(case.note for case in cases if case.model == "prior")


def _group_norm_case(cases):
    return next(case for case in cases if case.op == "group_norm" and case.backward and case.layout("scale"))


def test_a_wrong_kernel_fails_its_check(small_cases):
    case = _group_norm_case(small_cases)

    def off_by_a_little(t, options, out=None):
        return gpu_check.reference(case.op, t, options) * 1.001

    def leaves_a_hole(t, options, out=None):
        out.copy_(gpu_check.reference(case.op, t, options))
        out.view(-1)[::97] = math.nan  # as if some programs never stored
        return out

    def raises(t, options, out=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    wrong = gpu_check.Kernel("triton", off_by_a_little, False)
    for direction in ("forward", "backward"):
        row = gpu_check.check_case(case, "fp32", CPU, direction, kernel=wrong)
        assert row["status"] == "fail" and row["worst_ratio"] > 1 and "allowed" in row["reason"], row
    row = gpu_check.check_case(case, "fp32", CPU, "forward", kernel=gpu_check.Kernel("triton", leaves_a_hole, True))
    assert row["status"] == "fail" and "NaN/inf" in row["reason"]
    row = gpu_check.check_case(case, "bf16", CPU, "forward", kernel=gpu_check.Kernel("triton", raises, True))
    assert row["status"] == "error" and "illegal memory access" in row["reason"]
    right = gpu_check.check_case(case, "fp32", CPU, "forward",
                                 kernel=gpu_check.Kernel("triton", lambda t, o, out=None: gpu_check.reference(
                                     case.op, t, o), False))
    assert right["status"] == "pass" and right["worst_ratio"] == 0


@pytest.mark.slow
def test_a_wrong_kernel_fails_the_run(tmp_path, monkeypatch):
    """Through `main`: the failed rows, the verdict and exit status 1."""
    monkeypatch.delenv("CLIPSONIC_OPS", raising=False)

    def off(t, options, out=None):
        return gpu_check.reference("group_norm", t, options) + 0.1  # past the bf16 tolerance too

    status = gpu_check.main(["--small", "--out", str(tmp_path), "--parts", "correctness"],
                            kernels={"group_norm": gpu_check.Kernel("triton", off, False)})
    assert status == 1
    report = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    statuses = {(row["op"], row["direction"], row["status"]) for row in report["correctness"]}
    assert ("group_norm", "forward", "pass") not in statuses and ("group_norm", "forward", "fail") in statuses
    assert ("group_norm", "backward", "pass") in statuses  # a constant offset leaves the gradients right
    assert ("attention", "forward", "pass") in statuses
    assert not report["summary"]["passed"] and report["speed"] == []
    assert "**FAILED" in (tmp_path / gpu_check.MARKDOWN_NAME).read_text()


def test_speed_measurements_run_on_cpu(small_cases, monkeypatch):
    """What a GPU session runs first, exercised here at tiny sizes (the script itself skips these
    rows without CUDA). The Triton-forced training variant is left out: interpreted, it takes minutes."""
    from clipsonic.ops import anti_alias_native, group_norm_native

    require_extension(group_norm_native.cpu_module())
    require_extension(anti_alias_native.cpu_module())
    monkeypatch.delenv("CLIPSONIC_OPS", raising=False)
    monkeypatch.setattr(gpu_check, "OPS_VARIANTS", gpu_check.OPS_VARIANTS[:2])
    torch.set_num_threads(1)  # the C++ kernels' OpenMP teams stall for milliseconds on a busy 2-core machine
    for group in gpu_check.speed_groups(CPU, gpu_check.SIZES["small"], small_cases):
        rows = group.run()
        if group.section == "attention":
            assert rows == []  # clipsonic bench times attention on CUDA only
            continue
        assert rows, group.label
        for row in rows:
            assert row["status"] == "measured" and row["section"] == group.section, row
            assert row["median_ms"] > 0 and math.isfinite(row["median_ms"])
            if row["value_unit"]:
                assert row["value"] > 0
    rows = gpu_check.speed_rows(gpu_check.speed_groups(CPU, gpu_check.SIZES["small"], small_cases), CPU, math.inf)
    assert {row["status"] for row in rows} == {"skipped"}


def _keywords(call: ast.Call) -> dict:
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def test_tolerances_are_the_tests_own():
    """The script states the tests' tolerances once; they must not drift from the tests."""
    import test_ops_triton

    tables = {"attention": test_ops_triton.ATTENTION_TOLERANCE, "group_norm": test_ops_triton.NORM_TOLERANCE}
    for op, table in tables.items():
        for dtype in ("fp32", "bf16"):
            assert gpu_check.TOLERANCES[(op, dtype)] == (table[dtype]["atol"], table[dtype]["rtol"])

    functions = {node.name: node for node in ast.walk(ast.parse((TESTS / "test_ops_triton.py").read_text()))
                 if isinstance(node, ast.FunctionDef)}
    for name in ("test_attention_gradients_match_the_reference", "test_group_norm_gradients_match_the_reference"):
        gradient_checks = [_keywords(node) for node in ast.walk(functions[name]) if isinstance(node, ast.Call)
                           and ast.unparse(node.func) == "torch.testing.assert_close"
                           and ast.unparse(node.args[0]).endswith(".grad")]
        assert gradient_checks and all((c["atol"], c["rtol"]) == gpu_check.GRADIENT_TOLERANCE["fp32"]
                                       for c in gradient_checks)

    source = ast.parse((TESTS / "test_anti_alias_kernels.py").read_text())
    test = next(node for node in ast.walk(source) if isinstance(node, ast.FunctionDef)
                and node.name == "test_cuda_matches_reference")
    parametrize = next(d for d in test.decorator_list if "parametrize" in ast.unparse(d))
    cuda = {ast.unparse(pair.elts[0]): ast.literal_eval(pair.elts[1]) for pair in parametrize.args[1].elts}
    assert gpu_check.TOLERANCES[("anti_alias_activation", "fp32")] == (cuda["torch.float32"],) * 2
    assert gpu_check.TOLERANCES[("anti_alias_activation", "bf16")] == (cuda["torch.bfloat16"],) * 2
