"""The docs cannot drift from the code: every command and snippet they show is run here.

- Every ``fxtap ...`` line in a ```console or ```bash block of README.md and docs/*.md runs
  in-process through ``main(argv)``, the commands of one file in order, in one temporary
  folder. In ```console blocks the lines after a ``$ fxtap ...`` line are its expected output
  (stdout, then fxtap's own stderr lines other than progress), compared as doctest does with ELLIPSIS
  (``...`` matches anything) and NORMALIZE_WHITESPACE; an ``fxtap: error:`` line means exit 1.
- ``make TARGET`` lines must name a Makefile target.
- Every ```python block of README.md and docs/*.md runs; ``print(x)  # text`` checks that ``x``
  prints as ``text``, and a ```text block right after a snippet is its whole expected output.
  A block containing ``# docs: skip`` is not run (kept for snippets that need a GPU or the
  network; ``test_few_snippets_are_skipped`` keeps them rare). A page's snippets share one
  namespace, in order; an HTML comment ``<!-- docs: setup ... -->`` holds hidden Python run
  first (the imports and the model a page's fragments refer to).
- Relative links point at files that exist.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from fxtap.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# Pages other people are writing: a link to one is only checked once it exists.
PLANNED = {"docs/tracing.md", "docs/errors.md", "docs/benchmarks.md"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    output: str | None  # a ```text block right after this one (nothing but blank lines between)


def blocks(path: Path) -> list[Block]:
    source = path.read_text(encoding="utf-8")
    found = list(FENCE.finditer(source))
    out = []
    for i, m in enumerate(found):
        nxt = found[i + 1] if i + 1 < len(found) else None
        output = None
        if nxt is not None and nxt.group(1) == "text" and not source[m.end() : nxt.start()].strip():
            output = nxt.group(2)
        out.append(Block(m.group(1), m.group(2), source.count("\n", 0, m.start()) + 1, output))
    return out


@dataclass(frozen=True)
class Command:
    argv: list[str]
    expected: str | None  # None: exit 0, output not compared
    where: str


def commands(path: Path) -> list[Command]:
    out = []
    for block in blocks(path):
        if block.lang == "console":
            current: list[str] | None = None
            lines: list[str] = []
            for raw in [*block.text.splitlines(), "$ "]:
                if raw.startswith("$ "):
                    if current is not None:
                        out.append(Command(current, "\n".join(lines), f"{path.name}:{block.line}"))
                    current, lines = _fxtap_argv(raw[2:]), []
                elif current is not None:
                    lines.append(raw)
        elif block.lang in ("bash", "sh", "shell"):
            for raw in block.text.splitlines():
                argv = _fxtap_argv(raw.split("#", 1)[0])
                if argv is not None:
                    out.append(Command(argv, None, f"{path.name}:{block.line}"))
    return [c for c in out if c.argv is not None]


def _fxtap_argv(line: str) -> list[str] | None:
    words = shlex.split(line)
    if words[:1] == ["fxtap"]:
        return words[1:]
    if words[:3] == ["python", "-m", "fxtap"]:
        return words[3:]
    return None


def _files_with_commands() -> list[Path]:
    return [p for p in DOC_FILES if commands(p)]


@pytest.mark.filterwarnings("ignore:latency of:UserWarning")
@pytest.mark.parametrize("path", _files_with_commands(), ids=lambda p: p.name)
def test_every_fxtap_command_in_the_docs_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for cmd in commands(path):
        code = main(cmd.argv)
        captured = capsys.readouterr()
        err = [
            line
            for line in captured.err.splitlines()
            # fxtap's own messages; not progress lines, not what libraries log (torch's warnings)
            if line.startswith("fxtap: ") and not (line.endswith(" ...") or " done in " in line)
        ]
        got = captured.out + "".join(line + "\n" for line in err)
        shown = f"{cmd.where}: fxtap {shlex.join(cmd.argv)}"
        if cmd.expected is None:
            assert code == 0, f"{shown} exited {code}:\n{got}"
            continue
        want = 1 if "fxtap: error:" in cmd.expected else 0
        assert code == want, f"{shown} exited {code}, expected {want}:\n{got}"
        expected = cmd.expected.strip() + "\n"
        assert CHECKER.check_output(expected, got, FLAGS), (
            f"{shown} printed:\n{got}\nbut the docs show:\n{expected}"
        )


def test_make_targets_in_the_docs_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    shown = set()
    for path in DOC_FILES:
        for block in blocks(path):
            if block.lang in ("bash", "sh", "shell", "console"):
                shown |= set(re.findall(r"^\$?\s*make ([\w-]+)", block.text, re.M))
    assert shown, "the docs show no make command"
    assert shown <= targets, f"unknown make targets: {sorted(shown - targets)}"


def _python_blocks() -> list[tuple[Path, Block]]:
    out = []
    for path in DOC_FILES:
        if path.name not in FRAGMENTS:
            out += [(path, b) for b in blocks(path) if b.lang == "python" and SKIP not in b.text]
    return out


SKIP = "# docs: skip"
SETUP = re.compile(r"^<!-- docs: setup\n(.*?)^-->", re.S | re.M)
#: Pages whose snippets are fragments of a model the page does not define; not run.
FRAGMENTS: set[str] = set()


def test_few_snippets_are_skipped():
    skipped = [
        f"{p.name}:{b.line}"
        for p in DOC_FILES
        for b in blocks(p)
        if b.lang == "python" and SKIP in b.text
    ]
    assert len(skipped) <= 2, f"snippets not run: {skipped}"
    assert len(_python_blocks()) >= 15


PRINT_CHECK = re.compile(r"^(\s*)print\((.*)\)\s+#\s+(.+)$")


def _with_checks(code: str) -> str:
    """Turn ``print(x)  # text`` into a check that ``x`` prints as ``text``."""
    lines = []
    for line in code.splitlines():
        m = PRINT_CHECK.match(line)
        if m:
            indent, args, text = m.groups()
            line = f"{indent}__check__({text!r}, {args})"
        lines.append(line)
    return "\n".join(lines)


def _check(expected: str, *values: object) -> None:
    printed = " ".join(map(str, values))
    assert printed == expected, f"printed {printed!r}, the docs say {expected!r}"


def _pages_with_python() -> list[Path]:
    return list(dict.fromkeys(path for path, _ in _python_blocks()))


@pytest.mark.filterwarnings("ignore:latency of:UserWarning")
@pytest.mark.parametrize("path", _pages_with_python(), ids=lambda p: p.name)
def test_python_snippets_in_the_docs_run(path, tmp_path, monkeypatch):
    """A page's snippets run in order in one namespace, as a reader types them in one session.

    A snippet written as a ``>>>`` session runs as a doctest, its outputs compared.
    """
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__", "__check__": _check}
    for setup in SETUP.findall(path.read_text(encoding="utf-8")):
        exec(compile(setup, f"{path.name}: docs setup", "exec"), namespace)
    for page, block in _python_blocks():
        if page != path:
            continue
        where = f"{path.name}:{block.line}"
        if block.text.lstrip().startswith(">>> "):
            test = doctest.DocTestParser().get_doctest(block.text, namespace, where, where, 0)
            runner = doctest.DocTestRunner(optionflags=FLAGS)
            report = io.StringIO()
            runner.run(test, out=report.write, clear_globs=False)
            assert runner.failures == 0, f"{where}:\n{report.getvalue()}"
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(_with_checks(block.text), where, "exec"), namespace)
        if block.output is not None:
            expected = block.output
            assert CHECKER.check_output(expected, out.getvalue(), FLAGS), (
                f"{where} printed:\n{out.getvalue()}\nbut the docs show:\n{expected}"
            )


LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_point_at_files(path):
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        relative = (
            resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else target
        )
        if relative in PLANNED and not resolved.exists():
            continue
        assert resolved.exists(), f"{path.name} links to {target!r}, which does not exist"


def test_the_docs_show_every_subcommand():
    shown = {c.argv[0] for p in DOC_FILES for c in commands(p) if c.argv}
    assert {"nodes", "extract", "render", "bench", "demo"} <= shown


def test_readme_says_how_to_run_what_make_installed():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/fxtap" in text and "source .venv/bin/activate" in text
    assert "(docs/extractor.md)" in text
