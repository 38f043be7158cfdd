"""Crash fuzzing of every op the safe loader allows: hostile arguments raise, never crash.

A graph the safe loader builds may call any allowlisted ATen op (``_allowlist.OPS``) or function
(``_allowlist.FUNCTIONS``) with any argument values a file holds. So every one of them must be
safe on any values: an exception is fine, a crash (SIGSEGV, abort) or a hang is not.

A child process calls each op in turn, as a loaded graph calls it: after the loader's check of
its arguments (``check_op_args``), through its checked stand-in where it has one
(``fxtap.save._guards``). It first searches for arguments that work (small
tensors, sizes and flags chosen from the op's schema, or by trying arities for a Python
function), then changes one to three of them at a time to hostile values: indices of 10**9, -10**9 and 2**62, negative and
huge sizes, empty, zero-size, 6-D and non-contiguous tensors, NaN and infinite scalars, odd
dtypes, every flag flipped. It prints a line before and after each op, so when it dies the
parent knows which op killed it and starts a new child after it; an op that takes longer than
``HANG_SECONDS`` counts as a hang. The child's address space is capped (2 GiB above what
importing torch takes), so a hostile size fails to allocate instead of taking the machine.

``make test`` runs a sample (the ops named in ``KNOWN`` plus ``SAMPLE`` others, drawn with a fixed
seed); ``FXTAP_THOROUGH=1`` runs every allowlisted op and function. ``CRASHING`` lists the ops
that crashed it and have no stand-in: tests/test_allowlist.py's generator leaves them out, and
the test checks that the allowlist holds none of them. ``FXTAP_FUZZ_TRACE=1`` prints each
call's arguments (the last line before a crash reproduces it);
``python tests/test_save_op_fuzz.py --report [OP ...]`` prints each op's outcome.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.crashing_ops import CRASHING  # noqa: E402

#: Ops the sample always includes: the known crashers' forward siblings and index-taking ops.
KNOWN = (
    "aten::max_pool2d_with_indices.default",
    "aten::embedding.default",
    "aten::index.Tensor",
    "aten::index_put.default",
    "aten::gather.default",
    "aten::scatter.src",
    "aten::as_strided.default",
    "aten::_embedding_bag.default",
    "aten::_native_batch_norm_legit_no_training.default",
    "aten::_native_batch_norm_legit.no_stats",
    "aten::_fft_r2c.default",
    "aten::_fft_c2r.default",
    "aten::zeros.default",
)
#: Working arguments for ops whose shapes must agree in ways a random search rarely finds.
SEEDS: dict[str, Callable[[Any], list[Any]]] = {
    "aten::max_pool2d_with_indices_backward.default": lambda torch: [
        torch.rand(1, 1, 2, 2), torch.rand(1, 1, 4, 4), [2, 2], [2, 2], [0, 0], [1, 1], False,
        torch.zeros(1, 1, 2, 2, dtype=torch.long),
    ],
    "aten::max_pool2d_with_indices.default": lambda torch: [
        torch.rand(1, 1, 4, 4), [2, 2], [2, 2], [0, 0], [1, 1], False,
    ],
    "aten::embedding_dense_backward.default": lambda torch: [
        torch.rand(3, 4), torch.tensor([0, 1, 2]), 10, -1, False,
    ],
    "aten::_native_batch_norm_legit_no_training.default": lambda torch: [
        torch.rand(2, 3, 4), torch.rand(3), torch.rand(3), torch.rand(3), torch.rand(3), 0.1, 1e-5,
    ],
    "aten::_native_batch_norm_legit.default": lambda torch: [
        torch.rand(2, 3, 4), torch.rand(3), torch.rand(3), torch.rand(3), torch.rand(3), True,
        0.1, 1e-5,
    ],
    "aten::_native_batch_norm_legit.no_stats": lambda torch: [
        torch.rand(2, 3, 4), torch.rand(3), torch.rand(3), True, 0.1, 1e-5,
    ],
    "aten::_embedding_bag.default": lambda torch: [
        torch.rand(10, 3), torch.tensor([0, 2, 4, 5]), torch.tensor([0, 2]), False, 0, False,
        None, False, -1,
    ],
    "aten::_fft_c2r.default": lambda torch: [
        torch.rand(2, 3, dtype=torch.complex64), [1], 0, 4,
    ],
    "aten::batch_norm.default": lambda torch: [
        torch.rand(2, 3, 4), torch.rand(3), torch.rand(3), torch.rand(3), torch.rand(3), False,
        0.1, 1e-5, False,
    ],
    "aten::bmm.default": lambda torch: [torch.rand(2, 3, 4), torch.rand(2, 4, 5)],
    "aten::col2im.default": lambda torch: [
        torch.rand(1, 4, 9), [4, 4], [2, 2], [1, 1], [0, 0], [1, 1],
    ],
    "aten::conv1d.default": lambda torch: [
        torch.rand(1, 2, 8), torch.rand(3, 2, 3), torch.rand(3), [1], [0], [1], 1,
    ],
    "aten::conv2d.default": lambda torch: [
        torch.rand(1, 2, 8, 8), torch.rand(3, 2, 3, 3), torch.rand(3), [1, 1], [0, 0], [1, 1], 1,
    ],
    "aten::convolution.default": lambda torch: [
        torch.rand(1, 2, 8, 8), torch.rand(3, 2, 3, 3), torch.rand(3), [1, 1], [0, 0], [1, 1],
        False, [0, 0], 1,
    ],
    "aten::einsum.default": lambda torch: ["ij,jk->ik", [torch.rand(2, 3), torch.rand(3, 4)], None],
    "aten::layer_norm.default": lambda torch: [
        torch.rand(2, 3, 4), [4], torch.rand(4), torch.rand(4), 1e-5, True,
    ],
    "aten::native_layer_norm.default": lambda torch: [
        torch.rand(2, 3, 4), [4], torch.rand(4), torch.rand(4), 1e-5,
    ],
    "aten::native_group_norm.default": lambda torch: [
        torch.rand(2, 4, 3), torch.rand(4), torch.rand(4), 2, 4, 3, 2, 1e-5,
    ],
    "aten::masked_scatter.default": lambda torch: [
        torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.rand(6),
    ],
    "aten::scaled_dot_product_attention.default": lambda torch: [
        torch.rand(1, 2, 4, 8), torch.rand(1, 2, 4, 8), torch.rand(1, 2, 4, 8), None, 0.0, False,
        None, False,
    ],
    "aten::scatter.src": lambda torch: [
        torch.rand(3, 4), 0, torch.zeros(2, 4, dtype=torch.long), torch.rand(2, 4),
    ],
    "aten::scatter_reduce.two": lambda torch: [
        torch.rand(3, 4), 0, torch.zeros(2, 4, dtype=torch.long), torch.rand(2, 4), "sum", True,
    ],
    "aten::reflection_pad3d.default": lambda torch: [torch.rand(1, 1, 4, 4, 4), [1] * 6],
    "aten::avg_pool2d_backward.default": lambda torch: [
        torch.rand(1, 1, 2, 2), torch.rand(1, 1, 4, 4), [2, 2], [2, 2], [0, 0], False, True, None,
    ],
}  # fmt: skip
SAMPLE = 24
THOROUGH = os.environ.get("FXTAP_THOROUGH") == "1"
HANG_SECONDS = 60.0
#: ``FXTAP_FUZZ_TRACE=1`` prints every call's arguments to the child's stderr.
TRACE = os.environ.get("FXTAP_FUZZ_TRACE") == "1"
BASE_TRIES = 200
MUTATIONS = 60
BIG = (10**9, -(10**9), 2**62, -(2**63), -2)


# --- argument pools ----------------------------------------------------------------------------


def _tensors(torch: Any) -> tuple[list[Callable[[], Any]], list[Callable[[], Any]]]:
    """(benign, hostile) tensor factories: fresh tensors per call (in-place ops change them)."""
    g = torch.Generator().manual_seed(0)

    def f(*shape: int) -> Callable[[], Any]:
        return lambda: torch.rand(*shape, generator=g)

    def index(*shape: int, value: int = 0) -> Callable[[], Any]:
        return lambda: torch.full(shape, value, dtype=torch.long)

    benign = [f(1, 1, 4, 4), f(1, 1, 2, 2), f(1, 3, 4), f(2, 3), f(3), lambda: torch.tensor(0.5)]
    benign += [index(3), index(1, 1, 2, 2), index(2, 3), lambda: torch.ones(2, 3, dtype=torch.bool)]
    benign += [f(2, 3, 4), f(4, 4), lambda: torch.tensor(1)]
    hostile: list[Callable[[], Any]] = []
    for value in BIG:
        hostile += [index(3, value=value), index(1, 1, 2, 2, value=value), index(2, 3, value=value)]
        hostile.append(lambda v=value: torch.full((2, 3), v % 2**31, dtype=torch.int32) * -1)
    hostile += [f(0), f(0, 3), f(1, 1, 1, 1, 1, 1), lambda: torch.rand(3, 4, generator=g).t()]
    hostile += [lambda: torch.full((1, 1, 4, 4), math.nan), lambda: torch.tensor(math.inf)]
    hostile += [lambda: torch.rand(2, 3, dtype=torch.float64, generator=g)]
    hostile += [lambda: torch.zeros(2, 3, dtype=torch.uint8), lambda: torch.zeros(2, 3).half()]
    hostile += [lambda: torch.zeros(2, 3, dtype=torch.complex64)]
    # zero strides (an expanded view); small: what a graph computes costs what it computes
    hostile += [lambda: torch.rand(1, generator=g).expand(1 << 8, 1 << 8)]
    return benign, hostile


def _pools(torch: Any) -> dict[str, tuple[list[Any], list[Any]]]:
    """(benign, hostile) values by schema type; callables make a fresh value."""
    benign_t, hostile_t = _tensors(torch)
    ints = ([1, 0, 2, -1, 3], [*BIG, 2**31, -(2**31) - 1])
    lists = (
        [[2, 2], [1, 1], [0, 0], [1], [2], [], [0], [-1], [2, 3], [1, 1, 2, 2], [1, 3, 4]],
        [[10**9, 10**9], [2**62], [-(10**9), -(10**9)], [1] * 12, [-1, -1], [2**62, 2**62, 2]],
    )
    floats = ([1.0, 0.5, 0.0, 2.0], [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-320])
    dtypes = [torch.float32, torch.int64]
    return {
        "Tensor": (benign_t, hostile_t),
        "int": ints,
        "SymInt": ints,
        "List[int]": lists,
        "List[SymInt]": lists,
        "float": floats,
        "bool": ([False, True], [True, False]),
        "Scalar": ([1, 0.5, 2, 0], [*BIG, math.nan, math.inf, True, 1e308]),
        # ints too: ATen declares these int and a file could give one (the loader refuses it)
        "ScalarType": (dtypes, [torch.bool, torch.uint8, torch.float16, torch.complex64, -2, 99]),
        "List[Tensor]": (
            [lambda: [benign_t[3]()], lambda: [benign_t[3](), benign_t[3]()]],
            [list, lambda: [hostile_t[0](), benign_t[3]()], lambda: [benign_t[0](), benign_t[4]()]],
        ),
        "List[Optional[Tensor]]": (
            [lambda: [benign_t[6]()], lambda: [None, benign_t[6]()]],
            [list, lambda: [hostile_t[0]()], lambda: [hostile_t[2](), None, hostile_t[1]()]],
        ),
        "str": (
            ["mean", "none", "sum", "ij,jk->ik", "trunc", "floor", "tanh", "constant"],
            ["", "x" * 200, "...->", "i,i,i,i,i,i->", "\x00", "reflect", "circular"],
        ),
        "Layout": ([torch.strided], [torch.sparse_coo, -2, 99]),
        "Device": ([torch.device("cpu")], [torch.device("meta")]),
        "MemoryFormat": (
            [torch.contiguous_format],
            [torch.channels_last, torch.channels_last_3d, -2, 99],
        ),
        "Generator": ([None], [None]),
    }


def _fresh(value: Any) -> Any:
    return value() if callable(value) and not isinstance(value, type) else _copy(value)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _choices(
    type_text: str, pools: dict[str, tuple[list[Any], list[Any]]]
) -> tuple[list[Any], list[Any]]:
    if type_text.startswith("Optional[") and type_text.endswith("]"):
        benign, hostile = _choices(type_text[9:-1], pools)
        return [None, *benign], [None, *hostile]
    if type_text in pools:
        return pools[type_text]
    any_value = [pools["Tensor"][0][3], 1, None, [1]]
    return any_value, [*pools["Tensor"][1][:4], *BIG, None]


# --- cases -------------------------------------------------------------------------------------


def _aten_cases(
    op: Any, pools: dict[str, Any], rng: random.Random
) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Arguments for an ATen overload: a working base found by search, then mutations."""
    arguments = [a for a in op._schema.arguments if not a.is_out]
    spaces = [_choices(str(a.real_type), pools) for a in arguments]
    has_default = [a.has_default_value() for a in arguments]

    def call_args(values: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = [], {}
        for arg, value in zip(arguments, values):
            if value is _DEFAULT:
                continue
            if arg.kwarg_only:
                kwargs[arg.name] = _fresh(value)
            else:
                args.append(_fresh(value))
        return args, kwargs

    def draw_base() -> list[Any]:
        return [
            _DEFAULT if d and rng.random() < 0.5 else rng.choice(b)
            for (b, _), d in zip(spaces, has_default)
        ]

    seed = SEEDS.get(_key(op))
    first = seed(_torch()) if seed is not None else None
    flags = [i for i, a in enumerate(arguments) if str(a.type) == "bool"]
    yield from _mutated(draw_base, spaces, call_args, rng, first=first, flags=flags)


def _key(op: Any) -> str:
    return f"{op.namespace}::{op._opname}.{op._overloadname}"


def _torch() -> Any:
    import torch

    return torch


def _function_cases(
    fn: Any, pools: dict[str, Any], rng: random.Random
) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Arguments for a Python-level function: arities 1 to 4, each value of any kind."""
    kinds = ("Tensor", "Tensor", "int", "List[int]", "float", "bool", "Optional[Tensor]", "str")
    benign = [v for k in kinds for v in _choices(k, pools)[0]]
    hostile = [v for k in kinds for v in _choices(k, pools)[1]]

    def call_args(values: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        return [_fresh(v) for v in values], {}

    for arity in (1, 2, 3, 4):
        spaces = [(benign, hostile)] * arity
        yield from _mutated(
            lambda n=arity: [rng.choice(benign) for _ in range(n)],
            spaces,
            call_args,
            rng,
            tries=BASE_TRIES // 4,
        )


_DEFAULT = object()


def _mutated(
    draw_base: Callable[[], list[Any]],
    spaces: list[tuple[list[Any], list[Any]]],
    call_args: Callable[[list[Any]], tuple[list[Any], dict[str, Any]]],
    rng: random.Random,
    tries: int = BASE_TRIES,
    first: list[Any] | None = None,
    flags: list[int] | None = None,
) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Search a base that works (the caller reports success by ``send``), starting at ``first``
    when given, then mutate it: each argument through each hostile value, with the ``flags``
    (bool arguments) as they are and all flipped, then one to three arguments at random."""
    base = None
    for attempt in range(tries):
        values = list(first) if attempt == 0 and first is not None else draw_base()
        worked = yield call_args(values)
        if worked:
            base = values
            break
    if base is None:
        return
    switches = [i for i in flags or () if isinstance(base[i], bool)]
    flipped = [not v if i in switches else v for i, v in enumerate(base)]
    for start in [base, flipped] if switches else [base]:
        for i, (_, hostile) in enumerate(spaces):
            for value in hostile:
                yield call_args([*start[:i], value, *start[i + 1 :]])
    for _ in range(MUTATIONS):
        values = list(base)
        for i in rng.sample(range(len(spaces)), min(len(spaces), rng.randint(1, 3))):
            benign, hostile = spaces[i]
            values[i] = rng.choice(hostile if rng.random() < 0.7 else benign)
        yield call_args(values)


def _describe(value: Any) -> str:
    """Arguments as text: tensors by dtype, shape, strides and their first values."""
    import torch

    if isinstance(value, torch.Tensor):
        head = value.flatten()[:3].tolist() if value.numel() else []
        return f"T({value.dtype}, {tuple(value.shape)}, {value.stride()}, {head})"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_describe(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _loaded(key: str) -> Callable[..., Any]:
    """What a graph loaded without trust calls for ``key``: arguments the loader refuses
    (``check_op_args``) raise its ``LoadError``, the others reach the op or its stand-in."""
    from fxtap.save._ops import check_op_args, resolve_op

    op = resolve_op(key, trust=True)

    def call(*args: Any, **kwargs: Any) -> Any:
        check_op_args(key, args, kwargs, "fuzz")
        return op(*args, **kwargs)

    return call


def _resolve(key: str) -> Any:
    import torch

    from fxtap.save import _allowlist

    if "::" in key:  # by the allowlist's names, or by the key's (ops left out of the list)
        namespace, _, rest = key.partition("::")
        namespace, name, overload = _allowlist.OPS.get(key, (namespace, *rest.split(".")))
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    return _allowlist.resolve(*key.partition(":")[::2])


def child(keys: list[str]) -> None:
    """Call each op of ``keys``; print ``start KEY`` before and a JSON line after each."""
    import resource
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), size + (2 << 30)))
    pools = _pools(torch)
    for key in keys:
        print(f"start {key}", flush=True)
        rng = random.Random(key)
        fn = _resolve(key)
        cases = (_aten_cases if "::" in key else _function_cases)(fn, pools, rng)
        if "::" in key:  # what a loaded graph calls: the op's stand-in, after the arg check
            fn = _loaded(key)
        calls = worked_count = 0
        worked = None
        while True:
            try:
                args, kwargs = cases.send(worked)
            except StopIteration:
                break
            calls += 1
            if TRACE:  # the arguments of each call, so a crash can be reproduced
                print(key, _describe(args), _describe(kwargs), file=sys.stderr, flush=True)
            try:
                fn(*args, **kwargs)
                worked = True
                worked_count += 1
            except Exception:
                worked = False
        print(json.dumps({"op": key, "calls": calls, "worked": worked_count}), flush=True)


# --- the parent --------------------------------------------------------------------------------


def fuzz(keys: list[str]) -> dict[str, str]:
    """Run ``keys`` in children; {op: 'crashed (signal N)' or 'hung'} for each that failed,
    'ok N calls' for the others."""
    outcome: dict[str, str] = {}
    left = list(keys)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    while left:
        with subprocess.Popen(
            [sys.executable, __file__, *left],
            stdout=subprocess.PIPE,
            stderr=None if TRACE else subprocess.DEVNULL,
            text=True,
            env=env,
        ) as proc:
            _watch(proc, left[0], outcome)
        left = [k for k in left if k not in outcome]
    return outcome


def _watch(proc: subprocess.Popen[str], first: str, outcome: dict[str, str]) -> None:
    """Read one child's lines into ``outcome`` until it ends, dies or stalls on an op."""
    assert proc.stdout is not None
    current = None
    deadline = time.monotonic() + HANG_SECONDS * 2
    while True:
        left = max(0.0, deadline - time.monotonic())
        if not select.select([proc.stdout], [], [], left)[0]:
            proc.kill()
            proc.wait()
            outcome[current or first] = "hung"
            return
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            if current is not None or first not in outcome:
                outcome[current or first] = f"crashed (exit {code})"
            return
        if line.startswith("start "):
            current = line.split()[1]
            deadline = time.monotonic() + HANG_SECONDS
        elif line.startswith("{"):
            done = json.loads(line)
            outcome[done["op"]] = f"ok {done['calls']} calls, {done['worked']} worked"
            current = None


def selected() -> list[str]:
    from fxtap.save import _allowlist

    everything = sorted(_allowlist.OPS) + sorted(_allowlist.FUNCTIONS)
    if THOROUGH:
        return everything
    others = [k for k in everything if k not in KNOWN]
    return [*KNOWN, *random.Random(0).sample(others, SAMPLE)]


def test_ops_whose_kernels_trust_their_arguments_load_as_checked_stand_ins() -> None:
    import torch

    from fxtap.save._guards import GUARDS
    from fxtap.save._ops import encode_op, resolve_op

    for key, guard in GUARDS.items():
        assert resolve_op(key, trust=False) is guard
        namespace, _, rest = key.partition("::")
        assert encode_op(guard) == {"op": [namespace, *rest.split(".")]}, key
    with pytest.raises(RuntimeError, match="batch norm: mean"):
        GUARDS["aten::_native_batch_norm_legit_no_training.default"](
            torch.rand(2, 3, 4), None, None, torch.zeros(0), torch.ones(3), 0.1, 1e-5
        )
    with pytest.raises(RuntimeError, match="out of range"):
        GUARDS["aten::_fft_r2c.default"](torch.rand(4, 4), [10**9], 0, True)
    with pytest.raises(RuntimeError, match="out of range"):
        GUARDS["aten::_fft_c2r.default"](torch.rand(2, 3, dtype=torch.complex64), [10**9], 0, 4)


def test_ints_in_dtype_arguments_are_refused() -> None:
    import torch

    from fxtap.errors import LoadError
    from fxtap.save._ops import check_op_args

    with pytest.raises(LoadError, match=r"'dtype' of aten::zeros\.default is a dtype"):
        check_op_args("aten::zeros.default", ([2],), {"dtype": -2}, "graphs.eval[1].args")
    check_op_args("aten::zeros.default", ([2],), {"dtype": torch.float32}, "graphs.eval[1].args")


def test_crashing_ops_are_not_allowed() -> None:
    from fxtap.save import _allowlist

    assert not CRASHING & set(_allowlist.OPS)
    assert not [o for o in _allowlist.OPS if "backward" in o], "backward ops trust their indices"


def test_crashing_ops_do_crash() -> None:
    """The fuzzer finds the crashes it was built for (in ops called directly, not allowed)."""
    import subprocess as sp

    script = (
        "import torch\n"
        "torch.ops.aten.embedding_dense_backward.default(torch.randn(3, 4), "
        "torch.tensor([10**9, -5, 2]), 10, -1, True)\n"
    )
    run = sp.run([sys.executable, "-c", script], capture_output=True, timeout=120, check=False)
    assert run.returncode < 0, "embedding_dense_backward no longer crashes: see docs/saving.md"


def test_no_allowed_op_crashes_on_hostile_arguments() -> None:
    outcome = fuzz(selected())
    print("\n".join(f"{k}: {v}" for k, v in sorted(outcome.items())))
    failed = {k: v for k, v in outcome.items() if not v.startswith("ok")}
    assert not failed, f"add these to CRASHING and regenerate the allowlist: {failed}"
    assert sum(v.split()[3] != "0" for v in outcome.values()) > len(outcome) // 2, (
        "most ops never found working arguments: the fuzzer tests nothing"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        print(json.dumps(fuzz(sys.argv[2:] or selected()), indent=1))
    else:
        child(sys.argv[1:])
