"""The package's import graph has no cycle: every layer imports only the ones below it.

Each `import` and `from ... import` of a clipsonic module anywhere in a module counts (a function-level
import is a dependency too), except those under `if TYPE_CHECKING:`, which never run.
"""

import ast
import re
from pathlib import Path

import clipsonic

PACKAGE = Path(clipsonic.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_has_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {"clipsonic"} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _raised_texts(tree: ast.AST):
    """(line, text) of every string constant inside a `raise` statement."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield node.lineno, part.value


def test_library_errors_name_parameters_not_flags():
    """Errors raised outside the CLI speak of parameters (the CLI translates a ParameterError into its flag)."""
    offenders = []
    for name, path in _modules().items():
        if name == "clipsonic.cli" or name.startswith("clipsonic.cli."):
            continue
        for line, text in _raised_texts(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(text):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert offenders == []


def test_a_parameter_error_reads_as_a_parameter_or_as_a_flag():
    from clipsonic.errors import ParameterError
    from clipsonic.runtime import resolve_device

    try:
        resolve_device("tpu")
    except ParameterError as error:
        assert str(error).startswith("device='tpu': expected auto, cpu")
        assert error.for_cli().startswith("--device tpu: expected auto, cpu")
    else:
        raise AssertionError("no error")


def test_only_the_cli_imports_the_cli():
    modules = _modules()
    shell = {name for name in modules if name == "clipsonic.cli" or name.startswith("clipsonic.cli.")}
    reaching = {name: sorted(_imports(name, path, modules) & shell) for name, path in modules.items()
                if name not in shell and name != "clipsonic.__main__"}
    assert {name: found for name, found in reaching.items() if found} == {}
