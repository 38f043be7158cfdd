"""The package's shape: no import cycles, the library never imports the CLI, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fxtap"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> nx.DiGraph:
    """fxtap module -> the fxtap modules it imports, anywhere in its body (lazy imports too)."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import submodule`` depends on the submodule, not on pkg's names.
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in modules] or [node.module]
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_import_graph_sees_the_package():
    graph = import_graph()
    # The checker itself must see real edges, or every assertion below passes vacuously.
    assert graph.number_of_nodes() >= 20
    assert graph.has_edge("fxtap.extractor", "fxtap.prune")
    assert graph.has_edge("fxtap.cli._commands", "fxtap.cli._output")


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import cycles: {cycles}"


def test_library_never_imports_the_cli():
    graph = import_graph()
    offenders = [
        (src, dst)
        for src, dst in graph.edges
        if dst.startswith("fxtap.cli") and not src.startswith(("fxtap.cli", "fxtap.__main__"))
    ]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_small(name):
    lines = _modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it (limit {MAX_LINES})"


def test_tests_mirror_the_stages():
    tests = Path(__file__).resolve().parent
    for stage in ("trace", "names", "prune", "extractor", "capture", "save", "render", "cost"):
        assert (tests / f"test_{stage}.py").exists() or (tests / stage).is_dir(), stage


# --- the extractor protocol: no stage checks which kind of extractor it holds -----------------

#: The extractor kinds themselves, and the protocol: the only modules that may tell kinds apart.
EXTRACTOR_KINDS = (
    "fxtap._protocol",
    "fxtap.extractor",
    "fxtap.capture",
    "fxtap.split",
    "fxtap.edit",
)
_KIND_CLASSES = frozenset({"Extractor", "FeatureExtractor", "CaptureExtractor"})


def kind_checks(source: str) -> list[str]:
    """Each ``isinstance``/``issubclass`` on an extractor class and each read of ``prunes``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "prunes":
            found.append(f"line {node.lineno}: reads .prunes")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        args = node.args
        if node.func.id in ("isinstance", "issubclass") and len(args) == 2:
            classes = args[1].elts if isinstance(args[1], ast.Tuple) else [args[1]]
            named = {c.id if isinstance(c, ast.Name) else getattr(c, "attr", "") for c in classes}
            if named & _KIND_CLASSES:
                found.append(
                    f"line {node.lineno}: {node.func.id} on {sorted(named & _KIND_CLASSES)}"
                )
        elif (
            node.func.id in ("getattr", "hasattr")
            and len(args) >= 2
            and isinstance(args[1], ast.Constant)
            and args[1].value == "prunes"
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., 'prunes')")
    return found


def test_kind_checks_sees_every_form():
    # The scan itself must flag each form, or the test below passes vacuously.
    snippet = (
        "from fxtap import capture\n"
        "a = isinstance(x, FeatureExtractor)\n"
        "b = isinstance(x, (int, capture.CaptureExtractor))\n"
        "c = issubclass(t, Extractor)\n"
        "d = x.prunes\n"
        "e = getattr(x, 'prunes', False)\n"
        "f = hasattr(x, 'prunes')\n"
    )
    assert [f.split(":")[0] for f in kind_checks(snippet)] == [f"line {i}" for i in range(2, 8)]
    clean = "a = isinstance(x, nn.Module)\nb = x.views(request)\nc = is_extractor(x)\n"
    assert kind_checks(clean) == []


def test_no_stage_checks_the_extractor_kind():
    offenders = {
        name: found
        for name, path in _modules().items()
        if not any(name == kind or name.startswith(kind + ".") for kind in EXTRACTOR_KINDS)
        and (found := kind_checks(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, (
        "a stage tells extractor kinds apart; ask the extractor through its protocol "
        f"(fxtap/_protocol.py) instead: {offenders}"
    )


#: What ``import fxtap`` offers: what a user calls, what they get back, and every error the
#: library raises. Growing it is a decision: change this list in the same commit.
PUBLIC_API = (
    "CaptureExtractor", "CompatError", "CostReport", "CutError", "DotNotFoundError", "Drawing",
    "DroppedModuleError", "Extractor", "FeatureExtractor", "Features", "FxtapError",
    "InputShapeError", "InputTypeError", "InvalidArgumentError", "JobResult", "LoadError",
    "MissingExtraError", "MistraceError", "NodeCost", "NodeInfo", "NodeNotFoundError",
    "NodePathTracer", "NotReachedError", "OutputPathError", "Rendering", "ResourceError",
    "Split", "TraceError", "Traced", "UnsafeOutputError", "__version__", "compare",
    "create_feature_extractor", "edit", "edits", "extract_dataset", "get_graph_node_names",
    "load", "node_table", "open_features", "render", "save", "split", "trace",
)  # fmt: skip


def test_the_public_api_is_pinned():
    import fxtap

    assert tuple(fxtap.__all__) == PUBLIC_API
    assert all(getattr(fxtap, name) is not None for name in PUBLIC_API)


def test_every_error_the_library_raises_is_public_and_cli_errors_live_with_the_cli():
    import inspect
    import sys

    import fxtap
    import fxtap.cli
    from fxtap.errors import FxtapError

    for name in _modules():
        if name.startswith("fxtap.cli") or name == "fxtap.__main__":
            continue
        __import__(name)

        for cls_name, cls in inspect.getmembers(sys.modules[name], inspect.isclass):
            if issubclass(cls, FxtapError) and cls.__module__ == name:
                assert cls_name in fxtap.__all__, f"{name}.{cls_name} is raised but not public"
    assert "ModelSpecError" not in fxtap.__all__
    assert issubclass(fxtap.cli.ModelSpecError, fxtap.InvalidArgumentError)


# --- the tests themselves: no test module imports another ------------------------------------

TESTS = Path(__file__).resolve().parent


def _imported(source: str) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names (``from pkg import
    name`` counts ``pkg.name`` too: ``name`` may be a module)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found += [base] + [f"{base.rstrip('.')}.{a.name}".lstrip(".") for a in node.names]
    return found


def bad_imports(source: str) -> list[str]:
    """The imports in ``source`` that reach a test module (``test_*``, ``conftest``) or go
    through the old ``tests.`` root instead of ``support``."""
    bad = []
    for name in _imported(source):
        parts = name.lstrip(".").split(".")
        if parts[0] == "tests" or any(p.startswith("test_") or p == "conftest" for p in parts):
            bad.append(name)
    return sorted(set(bad))


def test_the_import_check_catches_each_form():
    snippet = (
        "import torch\n"
        "from support.checker import bitwise_equal\n"
        "from test_zoo import build\n"
        "import test_export\n"
        "from tests.models import Nested\n"
        "from tests import test_capture\n"
        "def f():\n"
        "    from . import test_render\n"
    )
    assert bad_imports(snippet) == [
        "test_export",
        "test_render",
        "test_zoo",
        "test_zoo.build",
        "tests",
        "tests.models",
        "tests.models.Nested",
        "tests.test_capture",
    ]
    assert bad_imports("import torch\nfrom support import models\nimport testing\n") == []


def test_no_test_module_imports_another():
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) >= 60 and (TESTS / "support" / "checker.py") in files
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in files
        if (found := bad_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, (
        f"{offenders}: move what test modules share to tests/support/ and import it as "
        "support.<module>"
    )
