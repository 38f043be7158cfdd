"""Library messages in the words of the command line: ``fmt='dot'`` -> ``--format dot``.

The library words its messages for Python (an argument and a value to pass). The command line
shows the same messages, so each Python spelling that has a flag is said as that flag here, in
one table; a parenthesis that already gave the command-line spelling is dropped.
"""

from __future__ import annotations

import re

__all__ = ["FLAGS", "cli_words"]

#: Python argument -> the flag that sets the same thing; ``{value: words}`` for flags whose
#: words depend on the value (``auto_leaf=False`` -> ``--no-auto-leaf``).
FLAGS: dict[str, str | dict[str, str]] = {
    "rounds": "--rounds",
    "min_run_time": "--min-run-time",
    "threads": "--threads",
    "nodes": "--nodes",
    "return_nodes": "--nodes",
    "train_return_nodes": "--train-nodes",
    "eval_return_nodes": "--eval-nodes",
    "device": "--device",
    "depth": "--depth",
    "max_nodes": "--max-nodes",
    "fmt": "--format",
    "out_dir": "-o",
    "out": "--out",
    "seed": "--seed",
    "example_inputs": "--input",
    "tracer": "--tracer",
    "at": "--at",
    "trust": {"True": "--trust", "": "--trust"},
    "auto_leaf": {"False": "--no-auto-leaf", "": "--no-auto-leaf"},
    "resume": {"False": "--restart", "": "--restart"},
}

#: What stands for a Python expression (``example_inputs=(torch.randn(1, 3, 224, 224),)``)
#: after a flag, where the command line takes a simple value.
_PLACEHOLDER = {"--input": "SHAPE", "--nodes": "NAME", "--train-nodes": "NAME"}
_PLACEHOLDER["--eval-nodes"] = "NAME"

_NAME = re.compile(r"(?<![\w.\-'\"])(" + "|".join(map(re.escape, FLAGS)) + r")=")
#: A parenthesis giving the command-line spelling, made redundant once the flag is said:
#: ``(--restart)``, ``(-o DIR)``, ``(on the command line: --input)``, ``(--input SHAPE on the
#: command line)``.
_CLI_ASIDE = re.compile(
    r" \((?:on the command line: )?-[^()]*\)|"
    r" \([^()]*on the command line\)"
)


def cli_words(text: str) -> str:
    """Say a library message in the words of the command line.

    >>> cli_words("Use more rounds=, a longer min_run_time=, or device='cpu'")
    'Use more --rounds, a longer --min-run-time, or --device cpu'
    >>> cli_words("pass fmt='dot' to write DOT only, or auto_leaf=False for the error")
    'pass --format dot to write DOT only, or --no-auto-leaf for the error'
    >>> cli_words("pass example_inputs=(torch.randn(1, 3, 224, 224),) (--input on the command line)")
    'pass --input SHAPE'
    """
    if _NAME.search(text) is None:
        return text
    text = _CLI_ASIDE.sub("", text)
    out: list[str] = []
    at = 0
    for match in _NAME.finditer(text):
        if match.start() < at:
            continue
        end = _value_end(text, match.end())
        out.append(text[at : match.start()])
        out.append(_flag(match.group(1), text[match.end() : end]))
        at = end
    out.append(text[at:])
    return "".join(out)


def _flag(name: str, value: str) -> str:
    flag = FLAGS[name]
    bare = value.strip("'\"")
    if isinstance(flag, dict):
        return flag.get(bare, flag[""])
    if not value:
        return flag
    simple = re.fullmatch(r"'[^']*'|\"[^\"]*\"|[\w.\-]+", value) is not None
    if simple and bare not in ("None", "True", "False"):
        return f"{flag} {bare}"
    names = re.fullmatch(r"\[('[^']*'(?:, '[^']*')*)\]", value)
    if names:  # a list of node names: --nodes a b
        return " ".join([flag, *(n.strip("'") for n in names.group(1).split(", "))])
    placeholder = _PLACEHOLDER.get(flag)
    return f"{flag} {placeholder}" if placeholder else flag


def _value_end(text: str, start: int) -> int:
    """Where the Python value written at ``text[start:]`` ends (balanced brackets, quotes)."""
    if start < len(text) and text[start] in "'\"":
        close = text.find(text[start], start + 1)
        return close + 1 if close != -1 else len(text)
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and (c.isspace() or c in ",;"):
            break
        i += 1
    # a sentence's full stop is not part of the value
    while i > start and text[i - 1] == "." and depth == 0:
        i -= 1
    return i
