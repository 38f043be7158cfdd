"""Record private functions (names starting with ``_``) as single nodes during a trace.

torch.fx's autowrap skips every global whose name starts with ``_``, so such a function in
``autowrap_functions`` is traced through, not recorded. ``patched_private`` patches the
module globals that hold it for the length of one trace, as torch.fx does for public ones.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import fx, nn

__all__ = ["is_private", "patched_private"]

#: NOTE: patches live in module globals, which every thread sees; one patched trace at a time
#: keeps one trace from restoring another's wrapper as the original.
_LOCK = threading.RLock()


def is_private(fn: Any) -> bool:
    """True for a function whose name starts with ``_``, which torch.fx never autowraps."""
    return str(getattr(fn, "__name__", "")).startswith("_")


@contextlib.contextmanager
def patched_private(functions: Iterable[Callable[..., Any]], root: Any) -> Iterator[None]:
    """Within the block, calls of ``functions`` on proxies become one ``call_function`` node.

    The globals patched are each function's own module and the modules defining the forward
    of ``root`` and of its submodules (where a call is looked up by name); every patched
    name is restored on exit. Calls without a proxy run the function itself.
    """
    targets = {id(fn): fn for fn in functions if is_private(fn)}
    if not targets:
        yield
        return
    with _LOCK:
        spaces = _namespaces(targets.values(), root)
        undo: list[tuple[dict[str, Any], str, Any, Any]] = []
        try:
            for space in spaces:
                for name, value in list(space.items()):
                    if id(value) in targets and value is targets[id(value)]:
                        wrapper = _record_as_node(value)
                        space[name] = wrapper
                        undo.append((space, name, value, wrapper))
            yield
        finally:
            for space, name, value, wrapper in reversed(undo):
                if space.get(name) is wrapper:
                    space[name] = value


def _namespaces(functions: Iterable[Callable[..., Any]], root: Any) -> list[dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for fn in functions:
        space = getattr(fn, "__globals__", None)
        if isinstance(space, dict):
            found.setdefault(id(space), space)
    modules = root.modules() if isinstance(root, nn.Module) else ()
    for module in modules:
        space = getattr(type(module).forward, "__globals__", None)
        if isinstance(space, dict):
            found.setdefault(id(space), space)
    return list(found.values())


def _record_as_node(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        proxies: list[fx.Proxy] = []
        fx.node.map_aggregate(
            (args, kwargs), lambda a: proxies.append(a) if isinstance(a, fx.Proxy) else None
        )
        if not proxies:
            return fn(*args, **kwargs)
        proxy = proxies[0].tracer.create_proxy("call_function", fn, args, kwargs)
        # NOTE: torch.fx's own mark: the generated code then calls torch.fx.wrap on the name,
        # so a re-trace of that code (unpickling a GraphModule) keeps the node
        proxy.node.meta["is_wrapped"] = True
        return proxy

    return wrapped
