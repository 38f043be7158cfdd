"""Measure one transformers model type the way tests/test_zoo_hf.py checks it, and survey them all.

``measure(model_type)`` builds the tiny model of ``hf_zoo``, taps a leaf in the middle, the
input of a later module (a functional op's value) and ``:output``, and compares the extractor
with forward hooks on the unmodified model, bitwise, in eval and in train mode (same seed),
gradients too. It returns one row of docs/zoo.md's generated table and never raises.

``python -m support.hf_survey OUT.jsonl [TYPE ...]`` (run from ``tests/``) measures every type
(or the ones named) in one worker process and appends one JSON line per type, so a partial run
is still useful; a supervisor restarts the worker when a type hangs or crashes it and records
that type as failed. With no types named, types already in OUT.jsonl are skipped (a resumed
run); named types are measured again, and the table keeps each type's last line.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from support.hf_zoo import TEXT

__all__ = ["bitwise", "calls", "measure", "no_cache", "reference"]

#: The start of the worker's lines to the supervisor (a model may print lines of its own).
MARK = "@hf_survey "
#: A type whose measurement takes longer is recorded as failed (seconds, per stage alarm).
SOFT_TIMEOUT = 150
#: The supervisor kills a worker silent for this long (a hang in C code ignores the alarm).
HARD_TIMEOUT = 240


def bitwise(a: Any, b: Any) -> bool:
    """Whether two pytrees hold the same structure and bitwise-equal tensors."""
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            xb = x.detach().contiguous().reshape(-1).view(torch.uint8)
            if not torch.equal(xb, y.detach().contiguous().reshape(-1).view(torch.uint8)):
                return False
        elif x != y:
            return False
    return True


def no_cache(model: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` where ``forward`` takes it, by name or through ``**kwargs`` of a
    model whose config caches, as the export path passes it (caches are not tensors)."""
    params = inspect.signature(model.forward).parameters
    config = getattr(model, "config", None)
    caches = any(
        getattr(c, "use_cache", None) is True
        for c in (config, getattr(config, "text_config", None))
    )
    kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"use_cache": False} if "use_cache" in params or (kwargs and caches) else {}


def calls(model: nn.Module, inputs: dict[str, Any]) -> list[str]:
    """Leaf modules in call order, each called exactly once with a float tensor in and out
    (every one called with those, when fewer than 4 are called once)."""
    order: list[str] = []
    count: dict[str, int] = {}
    handles = []
    for path, mod in model.named_modules():
        # parametrizations (weight norm) compute a weight, not a value of the forward
        if path and not list(mod.children()) and ".parametrizations." not in path:

            def hook(m: nn.Module, args: Any, out: Any, path: str = path) -> None:
                ok = args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
                count[path] = count.get(path, 0) + 1
                if ok and args[0].is_floating_point() and path not in order:
                    order.append(path)

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(**{**inputs, **no_cache(model)})
    finally:
        for h in handles:
            h.remove()
    once = [p for p in order if count[p] == 1]
    if len(once) >= 4:
        return once
    # a recurrent model (dory, hrm_text) calls every layer more than once: the taps are then
    # torch.nn modules, whose unsuffixed name is their first call's node (a module fxtap
    # traces through is selected as torchvision does, by the last node under its path)
    kinds = {p: type(m).__module__ for p, m in model.named_modules()}
    return [p for p in order if kinds[p].startswith("torch.nn")]


def reference(model: nn.Module, inputs: dict[str, Any], leaf: str, before: str) -> Any:
    """Forward hooks' values of ``leaf`` (output) and ``before`` (first input), and the output."""
    values: dict[str, Any] = {}

    # NOTE: a hook that returns a value replaces the module's output (or arguments): return None
    def leaf_hook(m: nn.Module, a: Any, o: Any) -> None:
        values.setdefault("leaf", o.clone())

    def input_hook(m: nn.Module, a: Any) -> None:
        # cloned: the module may write into its input (ReLU(inplace=True))
        values.setdefault("inp", a[0].clone())

    h1 = model.get_submodule(leaf).register_forward_hook(leaf_hook)
    h2 = model.get_submodule(before).register_forward_pre_hook(input_hook)
    try:
        _seed()
        out = model(**{**inputs, **no_cache(model)})
    finally:
        h1.remove()
        h2.remove()
    return values, out


def measure(model_type: str) -> dict[str, Any]:
    """One row of the generated table: how fxtap builds ``model_type`` and whether it is exact.

    ``status`` is ``no eager run`` (the tiny model fails on its own: ``reason``), ``pruned``
    (a ``FeatureExtractor``), ``captured`` (a ``CaptureExtractor``: ``reason`` is fxtap's
    warning) or ``fails`` (fxtap raised, or the values differ from the hooks': ``reason``).
    ``bitwise`` says whether every value and gradient equals the hooks' (``None`` when not
    compared); ``kept``/``total`` count the parameters of the eval graph and of the model.
    """
    import fxtap
    from fxtap.extractor import FeatureExtractor
    from support.hf_zoo import example_inputs, tiny_model

    row: dict[str, Any] = {"type": model_type, "status": "", "reason": "", "bitwise": None}
    row.update(kept=None, total=None, build_s=None, eager=False, inputs=[])
    try:
        model = tiny_model(model_type)
        inputs = example_inputs(model)
    except Exception as exc:
        return {**row, "status": "no eager run", "reason": _reason(exc)}
    failed: Exception | None = None
    for candidate in _candidates(inputs):
        try:
            order = calls(model, candidate)
            model.train()
            _seed()
            model(**{**candidate, **no_cache(model)})
            model.eval()
            inputs, failed = candidate, None
            break
        except Exception as exc:
            model.eval()
            failed = failed or exc  # the full inputs' error says more
    if failed is not None:
        return {**row, "status": "no eager run", "reason": _reason(failed)}
    row["inputs"] = sorted(inputs)
    inputs = {**inputs, **no_cache(model)}  # the extractor gets what the hooked model gets
    row.update(eager=True, total=sum(p.numel() for p in model.parameters()))
    if len(order) < 4:
        return {**row, "status": "fails", "reason": f"only {len(order)} leaf modules to tap"}
    leaf, before = order[len(order) * 2 // 5], order[len(order) * 3 // 5]
    taps = {leaf: "leaf", f"{before}:input": "inp"}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = fxtap.create_feature_extractor(
                model,
                train_return_nodes={**taps, ":output": "out"},
                eval_return_nodes=taps,
                example_inputs=inputs,
            )
    except Exception as exc:
        return {**row, "status": "fails", "reason": _reason(exc)}
    row["build_s"] = round(time.perf_counter() - start, 2)
    if isinstance(ex, FeatureExtractor):
        targets = {str(n.target) for n in ex.graph_for("eval").nodes if n.op == "get_attr"}
        row.update(status="pruned")
        row["kept"] = sum(p.numel() for n, p in ex.named_parameters() if n in targets)
    else:
        why = next((str(w.message) for w in caught if "capture" in str(w.message)), "")
        # the capture warning explains torch.fx's failure, then torch.export's: keep export's
        why = why.partition("torch.export could not trace it either: ")[2] or why
        row.update(status="captured", reason=_reason(why or "no warning"))
    if isinstance(ex, FeatureExtractor):
        # NOTE: the pruned graph fixed use_cache=False at build time and takes tensors only
        inputs = {k: v for k, v in inputs.items() if k != "use_cache"}
    try:
        wrong = _compare(model, ex, inputs, leaf, before)
    except Exception as exc:
        return {**row, "status": "fails", "reason": "call: " + _reason(exc)}
    row["bitwise"] = not wrong
    if wrong and row["status"] == "pruned":
        row.update(status="fails", reason="not bitwise equal to hooks: " + ", ".join(wrong))
    return row


def _candidates(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The inputs to try in turn: as built, waveforms with a channel dim, the text alone."""
    found = [inputs]
    wave = inputs.get("input_values")
    if isinstance(wave, torch.Tensor) and wave.dim() == 2:  # codecs read (batch, 1, time)
        found.append({**inputs, "input_values": wave[:, None]})
    text = {k: v for k, v in inputs.items() if k in TEXT}
    if text and len(text) < len(inputs):
        # a multimodal model whose image or audio tokens are not in input_ids runs on its text
        found.append(text)
    return found


def _compare(
    model: nn.Module, ex: nn.Module, inputs: dict[str, Any], leaf: str, before: str
) -> list[str]:
    """What differs from the hooks: ``eval leaf``, ``train :output``, ``gradients``...

    Gradients are compared one tap at a time: summed into one loss, two taps that share
    ancestors add their gradients in an order autograd picks, and that order is not a
    property of the values (docs/zoo.md, torchaudio's Conformer).
    """
    wrong = []
    with torch.no_grad():
        ref, _ = reference(model, inputs, leaf, before)
        _seed()  # some models draw in eval mode too (ViT-MAE's masking, VITS' noise)
        got = ex.eval()(**inputs)
    wrong += [f"eval {k}" for k in ("leaf", "inp") if not bitwise(got[k], ref[k])]
    model.train()
    ex.train()
    try:
        ref, out = reference(model, inputs, leaf, before)
        _seed()
        got = ex(**inputs)
        wrong += [] if bitwise(got["out"], out) else ["train :output"]
        wrong += [f"train {k}" for k in ("leaf", "inp") if not bitwise(got[k], ref[k])]
        found = 0
        for k in ("leaf", "inp"):
            want, have = _grads(model, ref[k]), _grads(model, got[k])
            found += len(want)
            if want.keys() != have.keys() or not all(bitwise(have[n], want[n]) for n in want):
                wrong.append(f"gradients of the {k} tap")
        wrong += [] if found else ["no gradients"]
    finally:
        model.eval()
        ex.eval()
    return wrong


def _grads(model: nn.Module, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of ``value.sum()`` for each parameter that gets one, by name."""
    if not value.requires_grad:
        return {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    found = torch.autograd.grad(
        value.float().sum(), [p for _, p in named], retain_graph=True, allow_unused=True
    )
    return {n: g for (n, _), g in zip(named, found) if g is not None}


def _seed() -> None:
    torch.manual_seed(0)
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass


def _reason(exc: Any) -> str:
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    text = " ".join(text.split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _timeout(*_: Any) -> None:
    raise TimeoutError(f"over {SOFT_TIMEOUT} s")


def _work(types: list[str]) -> None:
    """Worker: measure each type, one JSON line on stdout per type (after a ``begin`` line).

    Both lines start with ``MARK``; whatever a model prints goes to stderr.
    """
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    out = sys.stdout
    sys.stdout = sys.stderr
    for name in types:
        print(MARK + json.dumps({"begin": name}), file=out, flush=True)
        start = time.perf_counter()
        signal.alarm(SOFT_TIMEOUT)
        try:
            row = measure(name)
        except TimeoutError as exc:
            row = {"type": name, "status": "fails", "reason": f"timeout: {exc}", "bitwise": None}
        finally:
            signal.alarm(0)
        row["total_s"] = round(time.perf_counter() - start, 2)
        print(MARK + json.dumps(row), file=out, flush=True)
        gc.collect()
        if _rss_gib() > 3:  # the supervisor starts a fresh worker on the types left
            return


def _rss_gib() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:  # pragma: no cover - not Linux
        return 0.0


def _supervise(out: Path, types: list[str], *, resume: bool) -> None:
    import select

    done = set()
    if resume and out.exists():
        done = {json.loads(line)["type"] for line in out.read_text().splitlines() if line}
    todo = [t for t in types if t not in done]
    here = Path(__file__).resolve().parent.parent
    while todo:
        cmd = [sys.executable, "-m", "support.hf_survey", "--work", *todo]
        proc = subprocess.Popen(cmd, cwd=here, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        current = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], HARD_TIMEOUT)
            line = proc.stdout.readline() if ready else None
            if not line:  # silent too long, or the worker died
                if line is None:
                    proc.kill()
                proc.wait()
                why = "hang (killed)" if line is None else f"worker died ({proc.returncode})"
                if current is not None:
                    row = {"type": current, "status": "fails", "reason": why, "bitwise": None}
                    with out.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    todo.remove(current)
                break
            if not line.startswith(MARK):
                continue
            msg = json.loads(line[len(MARK) :])
            if "begin" in msg:
                current = msg["begin"]
                continue
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(msg) + "\n")
            todo.remove(msg["type"])
            current = None


if __name__ == "__main__":
    if sys.argv[1] == "--work":
        _work(sys.argv[2:])
    else:
        from support.hf_zoo import model_types

        # with no types named, every type not yet in OUT; named types are measured again
        _supervise(Path(sys.argv[1]), sys.argv[2:] or model_types(), resume=not sys.argv[2:])
