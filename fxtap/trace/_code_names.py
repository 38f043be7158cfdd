"""Refuse the names torch.fx would write into generated code wrongly, before it writes any.

torch.fx writes each part of a module or attribute target that is an identifier as
``self.part``, and any other part as ``getattr(self, "part")`` with the text pasted between the
quotes, unescaped. A quote, a backslash or a control character breaks that literal (a raw
``SyntaxError`` when the code compiles) or changes what it names: ``"a\\x62"`` reads as ``"ab"``,
another module. A keyword (``self.class``) does not compile, and Python folds identifiers with
NFKC when it compiles them, so a fullwidth ``ｆｃ`` is written as ``self.ｆｃ`` and runs
``self.fc``. Traces are checked here, naming the module path, before a ``GraphModule``
compiles their code.
"""

from __future__ import annotations

import keyword
import re
import unicodedata

from torch import fx

from fxtap.errors import InvalidArgumentError

__all__ = ["check_code_names"]

_WHAT = {"call_module": "module path", "get_attr": "attribute", "call_method": "method"}


def check_code_names(graph: fx.Graph, model_name: str) -> None:
    """Raise unless every module, attribute and method name of ``graph`` reads back as itself.

    Raises:
        InvalidArgumentError: a name holds a quote, a backslash or a control character, is a
            keyword, or is an identifier NFKC folds to another; the message names its path.

    >>> g = fx.Graph()
    >>> _ = g.output(g.get_attr('bad"name'))
    >>> check_code_names(g, "Net")
    Traceback (most recent call last):
    fxtap.errors.InvalidArgumentError: attribute 'bad"name' of Net cannot be written into the code torch.fx generates: it holds '"'. Rename it in the model to ASCII letters, digits and '_', e.g. 'bad_name'
    """
    for node in graph.nodes:
        if node.op not in _WHAT:
            continue
        target = str(node.target)
        for part in target.split(".") if node.op != "call_method" else [target]:
            reason = _unwritable(part, method=node.op == "call_method")
            if reason is not None:
                raise InvalidArgumentError(
                    f"{_WHAT[node.op]} {target!r} of {model_name} cannot be written into the "
                    f"code torch.fx generates: {reason}. Rename it in the model to ASCII letters, "
                    f"digits and '_', e.g. {_suggest(part)!r}"
                )


def _unwritable(part: str, *, method: bool) -> str | None:
    if part.isidentifier():
        if keyword.iskeyword(part):
            return f"{part!r} is a Python keyword"
        folded = unicodedata.normalize("NFKC", part)
        if folded != part:
            return f"Python reads {part!r} as {folded!r} (NFKC), another name"
        return None
    if method:
        return f"{part!r} is not an identifier"
    bad = next((c for c in part if c in '"\\' or not c.isprintable()), None)
    return None if bad is None else f"it holds {bad!r}"


def _suggest(part: str) -> str:
    ascii_part = re.sub(r"[^0-9A-Za-z_]", "_", unicodedata.normalize("NFKC", part))
    return ascii_part + "_" if keyword.iskeyword(ascii_part) else ascii_part
