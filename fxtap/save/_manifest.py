"""The ``.fxtap`` manifest's schema: check every field of the parsed ``fxtap.json``.

``check`` turns the parsed JSON into plain, validated specs (``Checked``) before anything
reaches torch.fx: names are identifiers (not keywords, not dunder, unique), op kinds and
argument structures are exactly those ``fxtap.save`` writes, nodes refer only to earlier
nodes, each graph has exactly one output, and every function, method and module class is
named exactly as in the allowlist (``fxtap/save/_allowlist.json``), unless the caller trusts the
file; ATen ops and output structures are checked by ``fxtap.save._ops``. A refusal is a ``LoadError`` naming the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch.fx import graph as fx_graph

from fxtap.errors import LoadError
from fxtap.save import _allowlist
from fxtap.save._config import Modules
from fxtap.save._ops import (
    REBUILD_OUTPUT,
    check_op,
    check_op_args,
    check_rebuild,
    check_treespec,
)
from fxtap.save._outputs import check_outputs
from fxtap.save._schema import (
    MARK_KEYS,
    MAX_NODES,
    PARAMETER_RESERVED,
    Checked,
    NodeSpec,
    Ref,
    as_bool,
    as_list,
    as_object,
    as_string,
    as_strings,
    check_keys,
    closest,
    decode,
    dotted_path,
    identifier,
    local_name,
    name,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "WEIGHTS",
    "Checked",
    "Ref",
    "check",
    "header",
    "tensor_list",
]

FORMAT_NAME = "fxtap-extractor"
FORMAT_VERSION = 1
MANIFEST = "fxtap.json"
WEIGHTS = "weights.safetensors"
MODES = ("train", "eval")

#: Functions that read attributes by name: their name argument must be a literal in
#: ``_allowlist.ATTRIBUTES``.
NAMED_ATTRIBUTE = frozenset({"builtins:getattr", "builtins:hasattr"})
_OPERATOR_FORMS = {**fx_graph.magic_methods, **fx_graph.inplace_methods}
OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_NODE_KEYS = frozenset({"name", "op", "target", "args", "kwargs"})
_TOP_KEYS = frozenset(
    {"format", "version", "torch", "class_name", "training", "graphs", "modules"}
    | {"attributes", "tensors", "outputs", "kept", "opaque"}
)


def check(data: Any, *, trust: bool) -> Checked:
    """Validate a parsed manifest; ``LoadError`` names the first field at fault."""
    top = header(data, _TOP_KEYS, frozenset({"fixed_to_none"}))
    tensors = tensor_list(top["tensors"])
    modules = Modules(tensors, trust=trust)
    for path, spec in as_object(top["modules"], "modules").items():
        modules.add_top(path, spec)
    attributes: dict[str, tuple[str, bool]] = {}
    for path, spec in as_object(top["attributes"], "attributes").items():
        where = f"attributes.{path}"
        dotted_path(path, where, top_level=True)
        check_keys(as_object(spec, where), {"tensor", "persistent"}, None, where)
        ref = modules.tensor(spec["tensor"], f"{where}.tensor", parameter=None)
        attributes[path] = (ref, as_bool(spec["persistent"], f"{where}.persistent"))
    modules.check_attributes(attributes)
    outputs = check_outputs(top["outputs"], MODES)
    graphs_raw = as_object(top["graphs"], "graphs")
    check_keys(graphs_raw, set(MODES), None, "graphs")
    targets = frozenset(attributes) | modules.tensor_paths
    graphs = {
        mode: _Graph(mode, modules.paths, targets, trust=trust).check(
            graphs_raw[mode], outputs[mode]
        )
        for mode in MODES
    }
    fixed = None
    if "fixed_to_none" in top:
        fixed = _fixed_to_none(top["fixed_to_none"], graphs, outputs, modules.paths, targets, trust)
    kept_raw = as_object(top["kept"], "kept")
    check_keys(kept_raw, set(MODES), None, "kept")
    kept = {m: frozenset(as_strings(kept_raw[m], f"kept.{m}")) for m in MODES}
    return Checked(
        class_name=identifier(top["class_name"], "class_name"),
        training=as_bool(top["training"], "training"),
        graphs=graphs,
        modules=modules.top,
        attributes=attributes,
        tensors=tensors,
        outputs=outputs,
        kept=kept,
        opaque=tuple(as_strings(top["opaque"], "opaque")),
        fixed_to_none=fixed,
    )


def _fixed_to_none(
    raw: Any,
    graphs: Mapping[str, tuple[NodeSpec, ...]],
    outputs: Mapping[str, Mapping[str | int, str]],
    modules: frozenset[str],
    targets: frozenset[str],
    trust: bool,
) -> tuple[tuple[str, ...], dict[str, tuple[NodeSpec, ...]]]:
    """The graphs for calls that leave ``args`` out: each argument an input of every graph."""
    where = "fixed_to_none"
    check_keys(as_object(raw, where), {"args", "graphs"}, None, where)
    args = tuple(identifier(a, f"{where}.args") for a in as_strings(raw["args"], f"{where}.args"))
    graphs_raw = as_object(raw["graphs"], f"{where}.graphs")
    check_keys(graphs_raw, set(MODES), None, f"{where}.graphs")
    fixed = {
        mode: _Graph(mode, modules, targets, trust=trust, where=f"{where}.graphs").check(
            graphs_raw[mode], outputs[mode]
        )
        for mode in MODES
    }
    for mode, nodes in (*graphs.items(), *fixed.items()):
        inputs = {str(n.target) for n in nodes if n.op == "placeholder"}
        if not args or not set(args) <= inputs:
            raise LoadError(
                f"{where}.args: {list(args)!r:.80} are not inputs of every {mode} graph"
            )
    return args, fixed


def header(
    data: Any, keys: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The top-level object, of this format and version, holding ``keys`` and no others but
    ``optional``."""
    top = as_object(data, MANIFEST)
    if top.get("format") != FORMAT_NAME or top.get("version") != FORMAT_VERSION:
        raise LoadError(
            f"it is format {top.get('format')!r:.40} version {top.get('version')!r:.20}; this "
            f"fxtap reads {FORMAT_NAME!r} version {FORMAT_VERSION}. Upgrade fxtap"
        )
    check_keys(top, keys, keys | optional, MANIFEST)
    as_string(top["torch"], "torch")
    return top


def tensor_list(raw: Any) -> dict[str, tuple[bool, bool]]:
    """``tensors``: key -> (parameter, requires_grad)."""
    tensors: dict[str, tuple[bool, bool]] = {}
    for key, info in as_object(raw, "tensors").items():
        where = f"tensors.{key}"
        check_keys(as_object(info, where), {"parameter", "requires_grad"}, None, where)
        tensors[as_string(key, where)] = (
            as_bool(info["parameter"], f"{where}.parameter"),
            as_bool(info["requires_grad"], f"{where}.requires_grad"),
        )
    return tensors


# --- graphs ----------------------------------------------------------------------------------


class _Graph:
    """Checks one mode's node list."""

    def __init__(
        self,
        mode: str,
        modules: frozenset[str],
        targets: frozenset[str],
        *,
        trust: bool,
        where: str = "graphs",
    ) -> None:
        self.mode = mode
        self.where = f"{where}.{mode}"
        self.modules = modules
        self.targets = targets | modules
        self.trust = trust
        self.names: set[str] = set()
        self.parameters: set[str] = set()

    def check(self, raw: Any, outputs: Mapping[str | int, str]) -> tuple[NodeSpec, ...]:
        entries = as_list(raw, f"{self.where}")
        if len(entries) > MAX_NODES:
            raise LoadError(f"{self.where}: {len(entries)} nodes, more than {MAX_NODES}")
        nodes: list[NodeSpec] = []
        for i, entry in enumerate(entries):
            where = f"{self.where}[{i}]"
            node = self._node(as_object(entry, where), where, last=i == len(entries) - 1)
            if node.op == "placeholder" and nodes and nodes[-1].op != "placeholder":
                raise LoadError(f"{where}: a placeholder follows other nodes")
            nodes.append(node)
            self.names.add(node.name)
        if not nodes or nodes[-1].op != "output":
            raise LoadError(f"{self.where} has no output node (it must be the last node)")
        value = nodes[-1].args[0]
        if isinstance(value, Ref):  # a split's head returns dict({...}): a plain dict
            made = next((n for n in nodes if n.name == value.name), None)
            if (
                made is not None
                and made.op == "call_function"
                and made.target == "builtins:dict"
                and made.args
            ):
                value = made.args[0]
        # no outputs: the graph returns what the model returns (a split's tail, an edited model)
        if outputs and (not isinstance(value, dict) or set(value) != set(outputs)):
            raise LoadError(
                f"{self.where}: the output node does not return the keys of outputs.{self.mode}"
            )
        return tuple(nodes)

    def _node(self, entry: Mapping[str, Any], where: str, *, last: bool) -> NodeSpec:
        check_keys(entry, _NODE_KEYS, _NODE_KEYS | {"fxtap_name", *MARK_KEYS}, where)
        node_name = local_name(entry["name"], f"{where}.name")
        if node_name in self.names:
            raise LoadError(f"{where}.name: a second node is named {node_name!r}")
        op = entry["op"]
        if op not in OPS:
            raise LoadError(f"{where}.op: {op!r:.60} is not one of {', '.join(OPS)}")
        if (op == "output") != last:
            raise LoadError(f"{where}.op: a graph holds exactly one output node, the last one")
        args = self._value(entry["args"], f"{where}.args", refs=op != "placeholder")
        kwargs = self._value(entry["kwargs"], f"{where}.kwargs", refs=op != "placeholder")
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise LoadError(f"{where}: args must be a tuple and kwargs a dict")
        for key in kwargs:
            identifier(key, f"{where}.kwargs")
        target = entry["target"]
        if op == "call_function" and isinstance(target, dict) and "op" in target:
            target = check_op(target, f"{where}.target", trust=self.trust)
            check_op_args(target, args, kwargs, f"{where}.args")
        elif op == "call_function":
            check_keys(as_object(target, f"{where}.target"), {"function"}, None, f"{where}.target")
            target = self._function(target["function"], args, kwargs, f"{where}.target")
        elif op == "call_method":
            target = self._method(target, args, f"{where}.target")
        elif op == "placeholder":
            target = self._placeholder(target, node_name, len(args) > 1 or bool(kwargs), where)
        elif op == "output":
            if target != "output" or len(args) != 1 or kwargs:
                raise LoadError(f"{where}: the output node returns exactly one value")
        else:
            target = self._stored(op, target, bool(args or kwargs), where)
        fxtap_name = entry.get("fxtap_name")
        if fxtap_name is not None:
            as_string(fxtap_name, f"{where}.fxtap_name")
        marks = tuple(
            (key, as_string(entry[key], f"{where}.{key}")) for key in MARK_KEYS if key in entry
        )
        return NodeSpec(node_name, op, target, args, kwargs, fxtap_name, marks)

    def _placeholder(self, target: Any, node_name: str, extra: bool, where: str) -> str:
        """A parameter of the generated forward: named once, after its node, no more than a default."""
        # NOTE: fx renames a placeholder named like a builtin (input -> input_1) but keeps
        # its target: the target is a parameter name of the generated forward
        target = identifier(target, f"{where}.target")
        renamed = re.fullmatch(re.escape(target) + r"_[0-9]+", node_name)
        if target in self.parameters or target in PARAMETER_RESERVED:
            raise LoadError(f"{where}.target: {target!r} cannot name a second parameter")
        self.parameters.add(target)
        if target != node_name and not renamed:
            raise LoadError(f"{where}.target: {target!r} cannot name a parameter of {node_name!r}")
        if extra:
            raise LoadError(f"{where}: a placeholder holds at most a default value")
        return target

    def _stored(self, op: str, target: Any, has_args: bool, where: str) -> str:
        """The target of a ``call_module`` or ``get_attr`` node: a module or tensor stored."""
        target = as_string(target, f"{where}.target")
        known = self.modules if op == "call_module" else self.targets
        if target not in known:
            raise LoadError(
                f"{where}.target: {target!r:.80} is not a stored module or tensor"
                f"{closest(target, known)}"
            )
        if op == "get_attr" and has_args:
            raise LoadError(f"{where}: get_attr takes no arguments")
        return target

    def _function(
        self, path: Any, args: tuple[Any, ...], kwargs: dict[str, Any], where: str
    ) -> str:
        path = as_string(path, where)
        if path not in _allowlist.FUNCTIONS and not self.trust:
            raise LoadError(
                f"{where}: its graph calls {path!r:.80}, which the safe loader does not "
                f"allow{closest(path, _allowlist.FUNCTIONS)}. Pass trust=True (--trust) only "
                "if you trust the file"
            )
        module_name, _, function = path.partition(":")
        operator_form = _OPERATOR_FORMS.get(function) if module_name == "operator" else None
        if operator_form is not None and (len(args) != operator_form.count("{}") or kwargs):
            # NOTE: fx writes operators as expressions ('{} + {}'), one argument per slot
            raise LoadError(
                f"{where}: {path} takes exactly {operator_form.count('{}')} positional arguments"
            )
        if path == REBUILD_OUTPUT:
            check_rebuild(args, kwargs, where)
        if path in NAMED_ATTRIBUTE:
            attribute = args[1] if len(args) == 2 and not kwargs else None
            if not isinstance(args[0] if args else None, Ref) or not isinstance(attribute, str):
                raise LoadError(f"{where}: {path} takes a node and a literal attribute name")
            attribute = name(attribute, f"{where}.args[1]", private=False)
            if attribute not in _allowlist.ATTRIBUTES and not self.trust:
                raise LoadError(
                    f"{where}: its graph reads the attribute {attribute!r:.80}, which the safe "
                    f"loader does not allow{closest(attribute, _allowlist.ATTRIBUTES)}"
                )
        return path

    def _method(self, target: Any, args: tuple[Any, ...], where: str) -> str:
        method = name(target, where, private=False)
        if method not in _allowlist.METHODS and not self.trust:
            raise LoadError(
                f"{where}: its graph calls the method {method!r:.80}, which the safe loader does "
                f"not allow{closest(method, _allowlist.METHODS)}"
            )
        if not args or not isinstance(args[0], Ref):
            raise LoadError(f"{where}: a method call's first argument must be a node")
        return method

    def _value(self, value: Any, where: str, *, refs: bool) -> Any:
        if isinstance(value, dict) and set(value) == {"node"}:
            name = value["node"]
            if not refs or not isinstance(name, str) or name not in self.names:
                raise LoadError(f"{where}: {name!r:.80} is not an earlier node of this graph")
            return Ref(name)
        if isinstance(value, dict) and set(value) == {"treespec"}:
            return check_treespec(value["treespec"], where)
        return decode(value, where, lambda v, w: self._value(v, w, refs=refs))
