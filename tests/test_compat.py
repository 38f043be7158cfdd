"""fxtap._compat: private torch names live only there, and each public fallback gives the same values.

Every fallback is forced with ``public_only()`` and compared, bitwise, with the private path.
"""

from __future__ import annotations

import ast
import collections
import copy
import math
import operator
import os
import pickle
import pydoc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torchvision
from torch import fx, nn
from torchvision.models.vision_transformer import VisionTransformer

from fxtap import _compat, create_feature_extractor
from fxtap._compat import CompatError, public_only
from fxtap._shapes import VALUE_KEY, propagate_shapes, suggest_input_shape
from fxtap.cost._count import count_flops
from fxtap.trace import trace
from support.checker import bitwise_equal, check_extractor

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fxtap"
COMPAT = PACKAGE / "_compat"

# --- the scan: no private torch name outside fxtap/_compat/ ----------------------------------

#: nn.Module's registries are a module's state, read by torch.fx and every serializer; no public
#: API shows a parameter registered as None, so they are allowed (fxtap/_compat says why).
REGISTRIES = frozenset({"_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"})


def _samples() -> list[Any]:
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(1, 1)))
    op = torch.ops.aten.add.Tensor
    return [nn.Module(), gm, gm.graph, next(iter(gm.graph.nodes)), fx.Tracer(), torch.zeros(1), op]


def _private(names: Any) -> set[str]:
    return {n for n in names if n.startswith("_") and not n.startswith("__")} - REGISTRIES


def _class_privates(cls: type, samples: list[Any]) -> set[str]:
    """Private names of a torch class: its attributes, and those of instances of it."""
    found = set(dir(cls))
    for s in samples:
        if isinstance(s, cls):
            found |= set(vars(s)) if hasattr(s, "__dict__") else set()
    return _private(found)


def torch_private_names() -> frozenset[str]:
    """Private attribute names of the torch objects fxtap handles (GraphModule's ``_code`` ...)."""
    samples = _samples()
    names: set[str] = set()
    for s in samples:
        names |= _private(dir(s)) | _private(getattr(s, "__dict__", {}))
        names |= _class_privates(type(s), samples)
    return frozenset(names)


class _Scan(ast.NodeVisitor):
    """Private torch names used in one module's source."""

    def __init__(self, private_names: frozenset[str]) -> None:
        self.private_names = private_names
        self.roots: dict[str, str] = {}  # local name -> dotted torch path
        self.hits: list[tuple[int, str]] = []
        self.classes: list[set[str] | None] = []  # per enclosing class: its torch bases' privates

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "torch":
                if any(_is_private(p) for p in parts):
                    self.hits.append((node.lineno, alias.name))
                local = alias.asname or parts[0]
                self.roots[local] = alias.name if alias.asname else "torch"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        parts = (node.module or "").split(".")
        if parts[0] != "torch":
            return
        for alias in node.names:
            if any(_is_private(p) for p in [*parts, alias.name]):
                self.hits.append((node.lineno, f"{node.module}.{alias.name}"))
            self.roots[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        privates: set[str] | None = None
        for base in node.bases:
            dotted = self._dotted(base)
            cls = pydoc.locate(dotted) if dotted else None
            if isinstance(cls, type):
                privates = (privates or set()) | _class_privates(cls, _SAMPLES)
        self.classes.append(privates)
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        if _is_private(name) and name not in REGISTRIES:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if isinstance(root, ast.Name) and root.id in self.roots:
                self.hits.append((node.lineno, name))  # torch.utils._pytree, fx._symbolic_trace
            elif on_self:
                own = self.classes[-1] if self.classes else None
                if own is not None and name in own:
                    self.hits.append((node.lineno, name))  # self._code in a GraphModule
            elif name in self.private_names:
                self.hits.append((node.lineno, name))  # node._erased, op._opname
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr", "setattr", "delattr"):
            key = node.args[1] if len(node.args) > 1 else None
            if isinstance(key, ast.Constant) and key.value in self.private_names:
                self.hits.append((node.lineno, str(key.value)))
        self.generic_visit(node)

    def _dotted(self, expr: ast.expr) -> str | None:
        parts = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name) or expr.id not in self.roots:
            return None
        return ".".join([self.roots[expr.id], *reversed(parts)])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


_SAMPLES = _samples()
PRIVATE_NAMES = torch_private_names()


def scan(source: str) -> list[tuple[int, str]]:
    visitor = _Scan(PRIVATE_NAMES)
    visitor.visit(ast.parse(source))
    return sorted(set(visitor.hits))


def test_no_private_torch_name_outside_compat() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if COMPAT not in path.parents and (hits := scan(path.read_text(encoding="utf-8")))
    }
    assert not found, f"private torch names outside fxtap/_compat/ (move them there): {found}"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("import torch\nisinstance(t, torch._ops.OpOverload)", "_ops"),
        ("from torch import fx\nfx.graph_module._copy_attr(a, b, 'x')", "_copy_attr"),
        ("from torch import fx\nfx._symbolic_trace._assert_is_none", "_symbolic_trace"),
        ("import torch\ntorch.utils._pytree.tree_map(f, x)", "_pytree"),
        ("import torch\ntorch._assert(x, 'm')", "_assert"),
        ("from torch.utils import _pytree as pytree", "torch.utils._pytree"),
        ("from torch._subclasses.fake_tensor import FakeTensorMode", "FakeTensorMode"),
        ("import torch._dynamo", "torch._dynamo"),
        ("from torch.fx.graph_module import _format_import_block", "_format_import_block"),
        ("def f(gm):\n    return gm._code, gm._lineno_map, gm._prologue_start", "_lineno_map"),
        ("def f(node):\n    return getattr(node, '_erased', False)", "_erased"),
        ("def f(op):\n    return op._opname, op._overloadname", "_overloadname"),
        ("def f(op):\n    return op._schema", "_schema"),
        ("def f(m):\n    return m._get_name()", "_get_name"),
        ("def f(t):\n    return t._version", "_version"),
        ("def f(g, t):\n    return g._target_to_str(t)", "_target_to_str"),
        ("from torch import nn\nnn.modules.dropout._DropoutNd", "_DropoutNd"),
        (
            "from torch import fx\nclass E(fx.GraphModule):\n    def f(self):\n"
            "        return self._graph",
            "_graph",
        ),
    ],
)
def test_scan_catches_known_private_uses(source: str, name: str) -> None:
    assert any(name.endswith(hit) or hit.endswith(name) for _, hit in scan(source)), scan(source)


def test_scan_leaves_own_and_public_names_alone() -> None:
    source = (
        "import torch\nfrom torch import fx, nn\n"
        "class Own:\n    def f(self):\n        return self._next, self._graph\n"
        "class Tracer(fx.Tracer):\n    def f(self):\n        return self._next\n"
        "torch.__version__, nn.Module, fx.GraphModule.graph\n"
        "def g(m):\n    return m._modules, m._parameters, m._buffers, getattr(m, '_fxtap')\n"
    )
    assert scan(source) == []


# --- every fallback gives the values of the private path --------------------------------------


@pytest.fixture(params=["private", "public"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    with public_only(request.param == "public"):
        yield request.param


def _tiny_vit() -> nn.Module:
    # torch._assert (input size check) and dropout, as in vit_b_16, at a size CPUs run quickly
    return VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        dropout=0.5,
    )  # fmt: skip


MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), ["layer1", "layer3.0.relu"]),
    "squeezenet": (
        lambda: torchvision.models.squeezenet1_1(weights=None),
        ["features.3", "classifier.0", "classifier.1"],
    ),
    "vit": (_tiny_vit, ["encoder.layers.encoder_layer_0.add", "heads"]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_extractors_match_hooks_bitwise_on_each_path(name: str, path: str) -> None:
    """Build, switch modes, pickle and deep-copy: every value bitwise, on both paths."""
    factory, nodes = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(2, 3, 32, 32)
    ex = check_extractor(model, nodes, [x])  # hooks reference, train and eval, gradients
    # each copy and its reference get their own buffers (train mode updates batch norm's)
    copies = [pickle.loads(pickle.dumps(ex)), copy.deepcopy(ex)]
    with _compat.public_only(False):
        reference = create_feature_extractor(model, nodes)
        references = [copy.deepcopy(reference) for _ in copies]
    for copy_, reference in zip(copies, references, strict=True):
        for training in (True, False, True, False):
            copy_.train(training)
            reference.train(training)
            torch.manual_seed(1)
            got = copy_(x)
            torch.manual_seed(1)
            want = reference(x)
            assert got.keys() == want.keys()
            assert all(bitwise_equal(got[k], want[k]) for k in want), (name, path, training)


def test_copy_attr_gives_the_same_module() -> None:
    src = nn.Module()
    src.block = nn.Sequential(nn.Linear(2, 2))
    src.block.register_buffer("kept", torch.ones(1))
    src.block.register_buffer("scratch", torch.zeros(1), persistent=False)
    src.block.plain = torch.full((1,), 3.0)  # a tensor that is no buffer
    copies = []
    for public in (False, True):
        dst = nn.Module()
        with public_only(public):
            for target in ("block.0", "block.kept", "block.scratch", "block.plain", "block.0.bias"):
                _compat.copy_attr(src, dst, target)
        copies.append(dst)
    a, b = copies
    assert list(a.state_dict(keep_vars=True)) == list(b.state_dict(keep_vars=True))
    assert all(x is y for x, y in zip(a.state_dict(keep_vars=True).values(),
                                      b.state_dict(keep_vars=True).values(), strict=True))  # fmt: skip
    assert dict(a.named_buffers()).keys() == dict(b.named_buffers()).keys()
    assert a.get_submodule("block.0") is b.get_submodule("block.0") is src.block[0]
    assert "block.scratch" not in a.state_dict() and "block.kept" in a.state_dict()


def test_import_blocks_bind_the_same_objects() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu(x + math.inf) * torch.tensor(1, device="cpu")

    code = fx.symbolic_trace(forward).graph.python_code(root_module="self")
    scopes = []
    for public in (False, True):
        with public_only(public):
            block = _compat.format_import_block(code.globals)
        scope: dict[str, Any] = {}
        exec(block, scope)  # the graph's own globals
        scopes.append(scope)
    for name, obj in code.globals.items():
        left, right = scopes[0][name], scopes[1][name]
        assert left is right or (
            isinstance(obj, (float, str)) and repr(left) == repr(right) == repr(obj)
        )


def test_node_graph_and_op_answers_agree() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[0] > 0, "empty")
        return nn.functional.relu(x) + x

    gm = fx.symbolic_trace(f)
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and "relu" in n.name)
    targets: list[Any] = [
        torch.add,
        operator.add,
        nn.functional.relu,
        "__add__",
        "relu",
        "camelCase",
    ]
    targets += [torch._assert, fx._symbolic_trace._assert_is_none, torch._assert_async]
    ops = [torch.ops.aten.add.Tensor, torch.ops.aten.abs.default, torch.ops.aten.add, torch.add]
    answers = []
    for public in (False, True):
        with public_only(public):
            erased_before = _compat.is_erased(node)
            g = copy.deepcopy(gm.graph)
            dead = next(n for n in g.nodes if n.name == node.name)
            dead.replace_all_uses_with(next(iter(g.nodes)))
            g.erase_node(dead)
            answers.append((
                erased_before, _compat.is_erased(dead),
                [_compat.target_to_str(gm.graph, t) for t in targets[:6]],
                [_compat.is_assert(t) for t in targets], [_compat.is_assert_is_none(t) for t in targets],
                [(_compat.is_op_overload(o), _compat.is_op_packet(o)) for o in ops],
                [_compat.op_parts(o) for o in ops[:2]],
                [isinstance(m, _compat.dropout_classes()) for m in _dropouts()],
                _compat.fx_reserved_globals(), _compat.weight_norm_class(),
                _compat.distribution_checks(),
            ))  # fmt: skip
    assert answers[0] == answers[1]
    assert answers[0][1] and not answers[0][0]


def _dropouts() -> list[nn.Module]:
    return [nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(), nn.AlphaDropout(),
            nn.FeatureAlphaDropout(), nn.ReLU()]  # fmt: skip


class _Pair(NamedTuple):
    a: Any
    b: Any


def test_trees_map_and_flatten_alike() -> None:
    tree = {
        "x": [torch.ones(2), (torch.zeros(1), None)],
        "pair": _Pair(torch.arange(3), 4),
        "od": collections.OrderedDict(k=torch.ones(1)),
        "dd": collections.defaultdict(list, {"v": [torch.zeros(2)]}),
    }
    results = []
    for public in (False, True):
        with public_only(public):
            mapped = _compat.tree_map(lambda v: v * 2 if isinstance(v, torch.Tensor) else v, tree)
            results.append((mapped, _compat.tree_leaves(tree), _compat.tree_leaves(None)))
    (m1, l1, n1), (m2, l2, n2) = results
    assert bitwise_equal(l1, l2) and n1 == n2 == [None]
    assert bitwise_equal(_compat.tree_leaves(m1), _compat.tree_leaves(m2))
    assert type(m2["pair"]) is _Pair and m2["dd"].default_factory is list


def test_version_marks_see_in_place_writes(path: str) -> None:
    t = torch.zeros(3)
    before = _compat.version_mark(t)
    assert _compat.version_mark(t) == before
    t.add_(1)
    assert _compat.version_mark(t) != before


def test_shapes_and_flops_agree() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    results = []
    for public in (False, True):
        with public_only(public):
            gm = trace(model, training=False).graph_module
            propagate_shapes(gm, [x])
            flops = count_flops(gm, (x,))
            results.append((
                [n.meta.get(VALUE_KEY) for n in gm.graph.nodes], flops.total, flops.per_op,
                suggest_input_shape(torchvision.models.squeezenet1_1(weights=None)),
            ))  # fmt: skip
    assert results[0] == results[1]


def test_weight_norm_checkpoints_load_alike() -> None:
    """An old-style weight-norm checkpoint (``weight_g``, ``weight_v``) loads the same values."""
    old = nn.utils.weight_norm(nn.Linear(3, 2))  # the legacy format, on purpose
    state = {k: v.detach().clone() for k, v in old.state_dict().items()}
    from fxtap._parametrized import add_weight_norm_hooks

    weights = []
    for public in (False, True):
        torch.manual_seed(0)
        new = nn.utils.parametrizations.weight_norm(nn.Linear(3, 2))
        with public_only(public):
            add_weight_norm_hooks(new)
        new.load_state_dict(state)
        weights.append(new.weight.detach())
    assert bitwise_equal(weights[0], weights[1])


def _reparametrize() -> None:
    """The step the safe loader takes: a base-class module holding ``parametrizations``."""
    from fxtap._parametrized import base_class

    wn = nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))
    plain = base_class(wn).__new__(base_class(wn))
    plain.__dict__ = {k: v for k, v in vars(wn).items()}
    _compat.reparametrize(plain, ["weight"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: _compat.fake_tensor_mode(),
        lambda: _compat.op_schema(torch.ops.aten.add.Tensor),
        lambda: _compat.pytree.tree_leaves([1]),
        lambda: _compat.load_pre_hooks(nn.Linear(1, 1)),
        lambda: _compat.wrap_load_pre_hook(print),
        _reparametrize,
    ],
)
def test_internals_without_public_equivalent_raise_a_typed_error(call: Any) -> None:
    call()  # works on the private path
    with public_only(), pytest.raises(CompatError, match="FXTAP_COMPAT_PUBLIC_ONLY"):
        call()


def test_environment_variable_forces_the_fallbacks() -> None:
    code = "from fxtap import _compat; print(_compat.use_private())"
    env = {**os.environ, "FXTAP_COMPAT_PUBLIC_ONLY": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert _compat.use_private()


def test_symbolic_check_passes_and_refuses_alike() -> None:
    # On concrete sizes both paths accept a true condition and refuse a false one; under
    # torch.export the private path records the condition (tests/test_export_shapes.py)
    for public in (False, True):
        with public_only(public):
            _compat.symbolic_check(torch.tensor(3).item() == 3)
            with pytest.raises(RuntimeError):
                _compat.symbolic_check(torch.tensor(3).item() == 4)
