"""The one checker every extractor test uses: lint, no dead code, bitwise values, gradients.

The reference values come from an independent run of the unmodified model: a
``torch.fx.Interpreter`` over the *full* traced graph that clones each value the moment it is
produced (so a later in-place op cannot change it), cross-checked against forward hooks on the
eager model for every module call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

import fxtap
from fxtap._draws import draws_random
from fxtap.trace import restore_training, trace

__all__ = [
    "Hooks",
    "bitwise_equal",
    "capture_reference",
    "check_extractor",
    "check_tap_gradient",
    "first_tensor",
    "graph_params",
    "hook_gradient",
    "hooked",
    "is_write",
    "loss_grads",
    "num_params",
    "output_score",
    "preserved",
    "tensor_grads",
]


def bitwise_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same bits (NaNs included), recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        a_bytes = a.detach().contiguous().reshape(-1).view(torch.uint8)
        b_bytes = b.detach().contiguous().reshape(-1).view(torch.uint8)
        return torch.equal(a_bytes, b_bytes)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    return bool(a == b)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Put buffers (BatchNorm statistics), gradients and RNG state back after the block."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g
        torch.set_rng_state(rng)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, names: Mapping[fx.Node, str]) -> None:
        super().__init__(gm)
        self.names = names
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.names:
            self.values[self.names[n]] = _clone(out)
        return out

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # NOTE: the generated forward builds a fresh list for each list literal on every call,
        # while the Interpreter hands out the graph's own immutable lists; a function that
        # writes into its list argument (video swin's ``_get_window_and_shift_size``) needs
        # them mutable, as in the model
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _mutable(args), _mutable(kwargs)


def _mutable(value: Any) -> Any:
    if isinstance(value, list):
        return [_mutable(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_mutable(v) for v in value)
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    return value


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value) if not hasattr(value, "_fields") else value
    return value


def capture_reference(
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    training: bool,
    seed: int = 0,
    tracer_kwargs: Mapping[str, Any] | None = None,
    names: Collection[str] | None = None,
    cross_check: bool = True,
) -> tuple[dict[str, Any], Any]:
    """Value of every named node, and the model output, from a full run of ``model``.

    Module calls are cross-checked against forward hooks on the eager model (first call of
    each module), so the reference does not rest on the trace alone. ``names`` keeps only the
    values of those nodes (large models: a clone of every value costs memory and time);
    ``cross_check=False`` skips the eager run.
    """
    traced = trace(model, training=training, tracer_kwargs=tracer_kwargs)
    gm = traced.graph_module
    kept = traced.names
    if names is not None:
        wanted = set(names)
        kept = {n: name for n, name in kept.items() if name in wanted}
    # The traced graph shares its submodules with the model: run them in the traced mode.
    with preserved(model), restore_training(model):
        model.train(training)
        torch.manual_seed(seed)
        rec = _Recorder(gm, kept)
        with torch.no_grad():
            output = rec.run(*inputs)
    # as before: with dropout, only eval mode (no random draws) is cross-checked
    if not cross_check or (training and _has_random(model)):
        return rec.values, output
    eager: dict[str, Any] = {}
    handles = []
    leaf_paths = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    for path, module in model.named_modules():
        if path in leaf_paths:

            def hook(_m: nn.Module, _i: Any, out: Any, path: str = path) -> None:
                eager.setdefault(path, _clone(out))

            handles.append(module.register_forward_hook(hook))
    try:
        with preserved(model), restore_training(model), torch.no_grad():
            model.train(training)
            torch.manual_seed(seed)
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    for path, value in eager.items():
        if path in rec.values:
            assert bitwise_equal(rec.values[path], value), (
                f"traced value of {path!r} differs from the eager module output"
            )
    return rec.values, output


def _has_random(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def check_extractor(
    model: nn.Module,
    return_nodes: Any,
    inputs: Sequence[Any],
    *,
    modes: Sequence[str] = ("train", "eval"),
    tracer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    check_grads: bool = True,
) -> fxtap.FeatureExtractor:
    """Build an extractor and assert what every extractor must satisfy, in each mode.

    - ``graph.lint()`` passes and no dead node remains (only in-place writes and asserts
      may have no users);
    - every output equals bitwise the value of that node in a full run of the model;
    - every kept floating-point parameter receives a gradient.
    """
    ex = fxtap.create_feature_extractor(model, return_nodes, tracer_kwargs=tracer_kwargs)
    for mode in modes:
        training = mode == "train"
        ex.train(training)
        graph = ex.graph
        graph.lint()
        for node in graph.nodes:
            if node.op not in ("placeholder", "output") and not node.users:
                ok = node.op == "call_function" and "assert" in getattr(node.target, "__name__", "")
                ok = ok or is_write(node, ex)
                # a random draw a later kept draw follows (the stream stays the model's)
                ok = ok or draws_random(node, ex, training=training)
                assert ok, f"dead node {node.format_node()} left in the {mode} graph"
        reference, _ = capture_reference(
            model, inputs, training=training, seed=seed, tracer_kwargs=tracer_kwargs
        )
        with preserved(model):
            torch.manual_seed(seed)
            with torch.no_grad():
                outputs = ex(*inputs)
        assert set(outputs) == set(ex.outputs[mode])
        for key, name in ex.outputs[mode].items():
            if name == ":output":
                continue
            assert bitwise_equal(outputs[key], reference[name]), (
                f"{mode} output {key!r} (node {name!r}) differs from the full model's value"
            )
        if check_grads:
            _check_grads(ex, model, inputs, seed)
    return ex


def is_write(node: fx.Node, ex: fx.GraphModule) -> bool:
    from fxtap.prune import _mutated_arg

    return _mutated_arg(node, ex) is not None


def _check_grads(ex: fx.GraphModule, model: nn.Module, inputs: Sequence[Any], seed: int) -> None:
    params = [p for p in ex.parameters() if p.requires_grad and p.is_floating_point()]
    if not params:
        return
    with preserved(model):
        for p in params:
            p.grad = None
        torch.manual_seed(seed)
        outputs = ex(*inputs)
        leaves = [
            t
            for t in torch.utils._pytree.tree_leaves(outputs)
            if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
        ]
        if not leaves:
            return
        sum(t.float().sum() for t in leaves).backward()
        missing = [n for n, p in ex.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"kept parameters got no gradient: {missing[:5]}"


def tensor_grads(score: torch.Tensor, value: Any) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad`` of ``score`` with respect to every tensor in ``value``."""
    leaves = [v for v in torch.utils._pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]
    return torch.autograd.grad(score, leaves, allow_unused=True)


def output_score(output: Any) -> torch.Tensor:
    """A scalar that depends on every differentiable tensor of a model's output."""
    leaves = [
        t
        for t in torch.utils._pytree.tree_leaves(output)
        if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
    ]
    return sum((t.float().sum() for t in leaves), torch.zeros(()))


def hook_gradient(
    model: nn.Module, path: str, inputs: Sequence[Any], score: Any, *, seed: int = 0
) -> tuple[Any, tuple[torch.Tensor | None, ...]]:
    """Value and gradient of ``score(output)`` at module ``path``, seen by a forward hook.

    The hook keeps the module's output and hands a copy on as the output (the Grad-CAM hook
    that survives later in-place ops such as ResNet's ``relu(bn1)``).
    """
    kept: list[Any] = []

    def hook(_m: nn.Module, _args: Any, out: Any) -> Any:
        if kept:
            return None
        kept.append(out)
        return torch.utils._pytree.tree_map(
            lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out
        )

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        # NOTE: gradients are taken before ``preserved`` writes the running statistics back:
        # an eval-mode BatchNorm saved them for its backward
        with preserved(model):
            torch.manual_seed(seed)
            output = model(*inputs)
            return kept[0], tensor_grads(score(output), kept[0])
    finally:
        handle.remove()


def check_tap_gradient(model: nn.Module, inputs: Sequence[Any], *, seed: int = 0) -> str | None:
    """Tap the middle differentiable top-level module; value and gradient equal a hook's.

    The score is the sum of the model's floating-point outputs. Returns the tapped path, or
    ``None`` when no top-level module has a differentiable tensor output (quantized models).
    """
    called: list[str] = []
    handles = []
    for path, module in model.named_children():

        def hook(_m: nn.Module, _args: Any, out: Any, path: str = path) -> None:
            if (
                path not in called
                and isinstance(out, torch.Tensor)
                and out.requires_grad
                and out.is_floating_point()
            ):
                called.append(path)

        handles.append(module.register_forward_hook(hook))
    try:
        with preserved(model), torch.no_grad():
            torch.manual_seed(seed)
            with torch.enable_grad():
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    if not called:
        return None
    path = called[len(called) // 2]
    value, expected = hook_gradient(model, path, inputs, output_score, seed=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ex = fxtap.create_feature_extractor(model, {path: "tap", ":output": "out"})
    ex.train(model.training)
    with preserved(model):
        torch.manual_seed(seed)
        out = ex(*inputs)
        got = tensor_grads(output_score(out["out"]), out["tap"])
    assert bitwise_equal(out["tap"], value), f"tapped value of {path!r}"
    assert bitwise_equal(got, expected), f"gradient at {path!r}"
    return path


# --- forward hooks on the unmodified model ---------------------------------------------------


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def first_tensor(value: Any) -> torch.Tensor:
    return next(v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor))


class Hooks:
    """Forward hooks on the model: a module's output, or the first input it receives.

    An output is kept as a copy (an in-place ReLU after ``bn1`` writes into it); an input
    is kept as the tensor itself: a copy is one more autograd node on the tapped tensor, and
    where three gradients meet there (mistral's ``layers.0.add_1``, the first input of layer
    1's ``input_layernorm``: the loss, that norm and layer 1's residual add) it changes the
    order they are summed in, so the gradient of a loss over both taps would differ in the
    last bits (up to 7e-7 on gradients of about 6) from the model's own. A later in-place
    write into a kept input would show as a value mismatch.
    """

    def __init__(self, model: nn.Module, outputs: dict[str, str], inputs: dict[str, str]):
        self.values: dict[str, Any] = {}
        self.handles = []
        for key, path in outputs.items():
            hook = self._keep(key, lambda o: first_tensor(o).clone())
            self.handles.append(model.get_submodule(path).register_forward_hook(hook))
        for key, path in inputs.items():
            pre = self._keep_input(key)
            self.handles.append(model.get_submodule(path).register_forward_pre_hook(pre))

    def _keep(self, key: str, pick: Callable[[Any], Any]) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            self.values.setdefault(key, pick(out))

        return hook

    def _keep_input(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.values.setdefault(key, args[0])

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def graph_params(ex: fxtap.FeatureExtractor, mode: str) -> int:
    targets = {str(n.target) for n in ex.graph_for(mode).nodes if n.op == "get_attr"}
    return sum(p.numel() for name, p in ex.named_parameters() if name in targets)


def hooked(
    model: nn.Module, paths: Sequence[str], inputs: Sequence[Any], training: bool
) -> tuple[dict[str, Any], Any]:
    """The first output of each module ``paths`` (by forward hooks) and the model's output."""
    seen: dict[str, Any] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda _m, _i, out, p=p: None if p in seen else seen.update({p: out})
        )
        for p in paths
    ]
    try:
        output = model.train(training)(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen, output


def loss_grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of ``loss`` for each parameter of ``model`` that gets one, by name (the
    model's ``.grad`` left empty)."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found
