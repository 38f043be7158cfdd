"""Installing fxtap as users do: declared ranges, extras, the lock, and a wheel beside its deps."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from fxtap._extras import EXTRAS, require_extra
from fxtap.errors import MissingExtraError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCK = ROOT / "requirements.lock"


def _requirement(text: str) -> tuple[str, str]:
    name = re.match(r"[A-Za-z0-9_.\-]+", text)
    assert name, text
    return name.group(0).lower(), text[name.end() :].strip()


def _locked() -> dict[str, str]:
    from support.lockdiff import read_lock

    return read_lock(str(LOCK))


def test_dependencies_are_ranges_with_lower_bounds_and_no_exact_pins():
    reqs = PYPROJECT["project"]["dependencies"] + [
        r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra
    ]
    for req in reqs:
        _, spec = _requirement(req)
        assert "==" not in spec, f"{req!r}: an exact pin keeps fxtap out of existing projects"
        assert spec.startswith(">="), f"{req!r}: give a lower bound"
    deps = dict(_requirement(r) for r in PYPROJECT["project"]["dependencies"])
    assert deps["torch"] == ">=2.14" and deps["torchvision"] == ">=0.29"


def test_the_declared_ranges_admit_the_locked_versions_and_torch_2_15():
    from packaging.requirements import Requirement

    locked = _locked()
    for req in PYPROJECT["project"]["dependencies"] + [
        r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra
    ]:
        r = Requirement(req)
        assert r.specifier.contains(locked[r.name.lower()]), (req, locked[r.name.lower()])
    torch_req = Requirement(next(r for r in PYPROJECT["project"]["dependencies"] if "torch>" in r))
    assert torch_req.specifier.contains("2.15.0") and torch_req.specifier.contains("2.14.1")
    assert not torch_req.specifier.contains("2.13.0")


def test_user_extras_are_the_four_and_test_tools_sit_in_the_dev_group():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {"hf", "timm", "dataset", "plot"} == set(EXTRAS)
    dev = {_requirement(r)[0] for r in PYPROJECT["dependency-groups"]["dev"]}
    assert {"pytest", "torchaudio", "grad-cam", "playwright"} <= dev
    # The error table names exactly the distributions pyproject declares for each extra.
    for extra, reqs in extras.items():
        assert {_requirement(r)[0] for r in reqs} == set(EXTRAS[extra].values()), extra


def test_requires_python_matches_the_code():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"


def test_the_lock_pins_every_installed_package_exactly():
    locked = _locked()
    text = LOCK.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=<>]+", ln) for ln in lines), lines[:3]
    for name in ("torch", "torchvision", "transformers", "zarr", "pytest", "pip", "setuptools"):
        assert name in locked, name
    import importlib.metadata

    # make test installed from the lock: what this interpreter runs is what the lock says.
    for name in ("torch", "torchvision", "transformers", "timm", "zarr", "numpy"):
        assert importlib.metadata.version(name) == locked[name], name


def test_a_missing_extra_is_one_typed_error_naming_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "zarr" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"needs 'zarr'.*pip install 'fxtap\[dataset\]'"):
        require_extra("dataset", purpose="fxtap run")
    with pytest.raises(ImportError):  # still an ImportError for code that catches that
        require_extra("dataset", purpose="extract_dataset()")


def test_cli_run_and_bench_plot_check_their_extra_before_any_work(monkeypatch, capsys, tmp_path):
    import importlib.util

    from fxtap.cli import main

    real = importlib.util.find_spec
    missing = {"zarr", "matplotlib"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    built: list[str] = []
    import fxtap.cli._models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: built.append("model"))
    code = main(
        [
            "run",
            "torchvision:resnet18",
            "--nodes",
            "layer1",
            "--data",
            "fakedata:4",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "fxtap run needs 'zarr'" in err and "pip install 'fxtap[dataset]'" in err
    code = main(
        ["bench", "torchvision:resnet18", "--nodes", "layer1", "--plot", str(tmp_path / "p.png")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "--plot needs 'matplotlib'" in err and "fxtap[plot]" in err
    assert built == [] and not (tmp_path / "s").exists()


def test_every_import_of_an_optional_package_is_declared():
    """Import what you declare: each third-party import in fxtap/ is a dependency or an extra."""
    declared = {"torch", "torchvision", "networkx", "safetensors", "numpy"}
    declared |= {name for table in EXTRAS.values() for name in table}
    stdlib = set(sys.stdlib_module_names)
    seen: set[str] = set()
    for path in (ROOT / "fxtap").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                seen |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                seen.add(node.module.split(".")[0])
    third_party = seen - stdlib - {"fxtap"}
    assert third_party <= declared, third_party - declared
    assert {"torch", "zarr", "matplotlib"} <= third_party


@pytest.mark.slow
def test_the_wheel_installs_beside_existing_dependencies_and_runs_the_demo(tmp_path):
    # Build from a copy holding only what the package declares, so package data must ship.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "fxtap", src / "fxtap", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("fxtap-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies are already installed: this interpreter's site-packages, seen after the
    # new venv's own.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "existing_deps.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [
            python,
            "-c",
            "import fxtap, importlib; print(fxtap.__file__); assert importlib.import_module('fxtap.save._allowlist').PATH.is_file()",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.startswith(str(venv)), where.stdout
    out = tmp_path / "demo"
    done = subprocess.run(
        [venv / "bin" / "fxtap", "demo", "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "resnet18.fxtap").is_file() and (out / "dataset" / "features").is_dir()
