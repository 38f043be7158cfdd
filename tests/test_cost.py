"""Tests for fxtap/cost*.py on models small enough to count FLOPs and bytes by hand."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
import torch
from torch import nn

from fxtap.cost import CostReport, compare
from fxtap.cost._count import count_flops, count_params, peak_liveness
from fxtap.cost._report import CSV_FIELDS
from fxtap.cost._time import bimodal, bootstrap_median_ci, iqr, median
from fxtap.errors import InvalidArgumentError, LoadError, OutputPathError
from fxtap.names import propagate_shapes
from fxtap.trace import trace

B = 3  # batch size of every example input
FAST = {
    "threads": 1,
    "min_run_time": 0.001,
    "rounds": 3,
    "warmup": 1,
    "node_repeats": 1,
    "profile_memory": False,
    "noise_threshold": None,
    "progress": False,
}


def linear_chain() -> nn.Sequential:
    """Nodes: input, 0, 1, 2, 3, 4; node 3 is an in-place ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4)
    )


def conv_chain() -> nn.Sequential:
    """Nodes: input, 0, 1, 2: conv 3->8 (3x3, pad 1), relu, conv 8->4 (3x3, stride 2, pad 1)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1)
    )


class Tied(nn.Module):
    """Two 8x8 linears; ``b`` reuses ``a``'s weight, ``c`` wraps ``a``'s weight's storage."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.c = nn.Linear(8, 8, bias=False)
        self.c.weight = nn.Parameter(self.a.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def linear_flops(features: list[int]) -> list[int]:
    """2 * batch * in * out for each Linear of a chain (the multiply-add counted twice)."""
    return [2 * B * i * o for i, o in itertools.pairwise(features)]


def conv_flops(cin: int, cout: int, k: int, hout: int, wout: int) -> int:
    """2 * batch * out-channels * output pixels * in-channels * kernel area (bias not counted)."""
    return 2 * B * cout * hout * wout * cin * k * k


@pytest.fixture(scope="module")
def linear_report() -> CostReport:
    return compare(linear_chain(), ["1"], torch.randn(B, 8), **FAST)


@pytest.fixture(scope="module")
def conv_report() -> CostReport:
    return compare(conv_chain(), {"1": "mid"}, torch.randn(B, 3, 10, 10), **FAST)


def test_linear_flops_are_exact(linear_report: CostReport) -> None:
    per_layer = linear_flops([8, 16, 32, 4])
    assert linear_report.total_flops == sum(per_layer)
    by_node = linear_report.flops_by("node")
    assert by_node == {
        "input": 0,
        "0": per_layer[0],
        "1": 0,
        "2": per_layer[1],
        "3": 0,
        "4": per_layer[2],
    }
    assert linear_report.op_flops == {"aten.addmm": sum(per_layer)}


def test_per_node_module_and_op_rows_sum_to_total(linear_report: CostReport) -> None:
    total = linear_report.total_flops
    assert sum(n.flops for n in linear_report.nodes) == total
    assert sum(linear_report.flops_by("module").values()) == total
    assert sum(linear_report.flops_by("op").values()) == total


def test_kept_fraction(linear_report: CostReport) -> None:
    per_layer = linear_flops([8, 16, 32, 4])
    assert [n.name for n in linear_report.nodes if n.kept] == ["input", "0", "1"]
    assert linear_report.kept_flops == per_layer[0]
    assert linear_report.kept_fraction == pytest.approx(per_layer[0] / sum(per_layer))
    assert linear_report.possible_speedup == pytest.approx(sum(per_layer) / per_layer[0])


def test_conv_flops_match_the_hand_formula(conv_report: CostReport) -> None:
    first = conv_flops(3, 8, 3, 10, 10)
    second = conv_flops(8, 4, 3, 5, 5)
    assert first == 129_600
    assert conv_report.flops_by("node") == {"input": 0, "0": first, "1": 0, "2": second}
    assert conv_report.op_flops == {"aten.convolution": first + second}
    assert conv_report.kept_fraction == pytest.approx(first / (first + second))
    assert conv_report.outputs == {"mid": "1"}


def test_uncounted_ops_are_listed_with_zero_flops(conv_report: CostReport) -> None:
    assert "aten.relu" in conv_report.uncounted_ops
    assert conv_report.flops_by("node")["1"] == 0


def test_parameters_kept_and_full(linear_report: CostReport) -> None:
    assert linear_report.full_params == sum(p.numel() for p in linear_chain().parameters())
    assert linear_report.kept_params == 8 * 16 + 16
    assert linear_report.full_bytes == 4 * linear_report.full_params
    assert linear_report.kept_bytes == 4 * linear_report.kept_params
    # The extractor shares its weights: dropping the model frees only the rest.
    assert linear_report.shared_bytes == linear_report.kept_bytes
    assert linear_report.freed_bytes == linear_report.full_bytes - linear_report.kept_bytes


def test_shared_weights_count_once() -> None:
    model = Tied()
    counted = count_params([model])
    # a.weight (64), a.bias (8), b.bias (8); b.weight is a.weight, c.weight shares its storage.
    assert counted.params == 80
    assert counted.param_bytes == 80 * 4
    report = compare(model, ["b"], torch.randn(B, 8), **FAST)
    assert report.full_params == 80
    assert report.kept_params == 80 - 0  # a and b keep the tied weight and both biases
    assert sum(n.params for n in report.nodes) == 64 * 3 + 16  # per node, shared ones repeat


def test_peak_liveness_by_hand() -> None:
    gm = trace(linear_chain(), training=False).graph_module
    propagate_shapes(gm, (torch.randn(B, 8),))
    # float32 rows of 16 and 32: '2' needs its input (192 B) and its output (384 B);
    # the in-place ReLU '3' allocates nothing.
    assert peak_liveness(gm.graph) == (B * (16 + 32) * 4, "2")
    # A hook keeping '1' alive adds its 192 B after its last use: '4' then holds 1, 2 and 4.
    assert peak_liveness(gm.graph, keep_alive={"1"}) == (B * (16 + 32 + 4) * 4, "4")
    assert peak_liveness(gm.graph, keep_alive={"0"}) == (B * (16 + 16 + 32) * 4, "2")


def test_peak_memory_per_variant(linear_report: CostReport) -> None:
    assert linear_report.variant("full").peak_bytes == B * (16 + 32) * 4
    assert linear_report.variant("extractor").peak_bytes == B * (16 + 16) * 4
    assert linear_report.variant("extractor").peak_node in {"0", "1"}
    assert linear_report.variant("hooks").peak_bytes >= linear_report.variant("full").peak_bytes


def test_profiler_memory_on_cpu() -> None:
    opts = {**FAST, "profile_memory": True}
    report = compare(linear_chain(), ["1"], torch.randn(B, 8), **opts)
    # The CPU allocator does not cache, so the profiler sees exactly the liveness estimate.
    for v in report.variants:
        assert v.profiler_peak_bytes == v.peak_bytes
        assert v.cuda_peak_bytes is None
    assert "peak act. (est / profiler)" in report.table()


def test_latency_samples_and_ratios(linear_report: CostReport) -> None:
    assert [v.name for v in linear_report.variants] == ["full", "hooks", "extractor"]
    for v in linear_report.variants:
        assert len(v.samples) == 3 and all(s > 0 for s in v.samples)
        assert v.median == median(v.samples)
        assert v.ratio_ci[0] <= v.ratio <= v.ratio_ci[1]
        assert v.device_samples == ()
    assert linear_report.variant("full").ratio == 1.0
    assert linear_report.ideal_time == pytest.approx(
        linear_report.variant("full").median * linear_report.kept_fraction
    )
    assert linear_report.kept_time_share is not None and 0 < linear_report.kept_time_share < 1


def test_hooks_variant_absent_when_a_tap_is_no_module_output() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + 1) * 2

    report = compare(Residual(), ["add"], torch.randn(B, 8), **FAST)
    assert [v.name for v in report.variants] == ["full", "extractor"]
    assert "'add'" in report.notes[0]


def test_json_round_trip(linear_report: CostReport, tmp_path) -> None:
    path = tmp_path / "cost.json"
    linear_report.to_json(path)
    data = json.loads(path.read_text())
    assert data["schema"] == "fxtap.cost/1"
    assert data["environment"]["torch"] == torch.__version__
    assert len(data["environment"]["loadavg"]) == 3
    assert data["variants"][0]["samples"] == list(linear_report.variants[0].samples)
    assert CostReport.from_json(path) == linear_report


def test_from_json_rejects_other_files(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"schema": "something/else"}')
    with pytest.raises(LoadError, match="schema"):
        CostReport.from_json(path)


def test_csv_has_one_row_per_node(conv_report: CostReport, tmp_path) -> None:
    path = tmp_path / "nodes.csv"
    conv_report.to_csv(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [r["name"] for r in rows] == ["input", "0", "1", "2"]
    assert [r["kept"] for r in rows] == ["True", "True", "True", "False"]
    assert int(rows[1]["flops"]) == 129_600
    assert int(rows[1]["params"]) == 3 * 8 * 9 + 8
    assert int(rows[1]["output_bytes"]) == B * 8 * 10 * 10 * 4


def test_plot_writes_a_png(conv_report: CostReport, tmp_path) -> None:
    path = tmp_path / "cost.png"
    conv_report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unwritable_path_raises_output_path_error(conv_report: CostReport, tmp_path) -> None:
    with pytest.raises(OutputPathError, match="missing"):
        conv_report.to_json(tmp_path / "missing" / "cost.json")


def test_heat_is_normalised(conv_report: CostReport) -> None:
    heat = conv_report.heat()
    assert set(heat) == {"input", "0", "1", "2"}
    assert max(heat.values()) == 1.0 and heat["0"] == 1.0
    assert heat["2"] == pytest.approx(conv_flops(8, 4, 3, 5, 5) / 129_600)


def test_table_names_limit_and_efficiency(conv_report: CostReport) -> None:
    text = conv_report.table()
    assert text.splitlines()[1].split() == ["variant", "FLOPs", "params", "peak", "act.", "median", "IQR", "ratio", "[95%", "CI]"]  # fmt: skip
    assert text.splitlines()[2].split()[:3] == ["full", "172.80", "k"]
    assert "physical limit" in text and "efficiency" in text
    assert "aten.relu" in text  # uncounted ops are listed


def test_progress_goes_to_stderr(capsys, monkeypatch) -> None:
    import sys

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    compare(linear_chain(), ["1"], torch.randn(B, 8), **{**FAST, "progress": True})
    assert "fxtap cost: latency round 3/3" in terminal.text
    assert capsys.readouterr().out == ""


def test_noisy_runs_warn() -> None:
    opts = {**FAST, "rounds": 4, "noise_threshold": 0.0}
    with pytest.warns(UserWarning, match="noisy.*rounds="):
        compare(linear_chain(), ["1"], torch.randn(B, 8), **opts)


def test_model_is_left_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = compare(model, ["1"], torch.randn(B, 3, 8, 8), training=True, **FAST)
    assert report.mode == "train"
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("threads", 0),
        ("rounds", 0),
        ("rounds", 1001),
        ("rounds", 2.0),
        ("min_run_time", 0),
        ("min_run_time", float("inf")),
        ("min_run_time", float("nan")),
        ("min_run_time", 61),
        ("min_run_time", True),
        ("warmup", -1),
        ("node_repeats", 10**9),
        ("device", "nonsense"),
    ],
)
def test_bad_options_raise(option: str, value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=option if option != "device" else "device"):
        compare(linear_chain(), ["1"], torch.randn(B, 8), **{**FAST, option: value})


def test_timing_budgets_are_checked_before_any_work() -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("traced or run before the options were checked")

    for option, value in (("min_run_time", float("inf")), ("rounds", 10**12)):
        with pytest.raises(InvalidArgumentError, match=rf"{option}=.* is out of range: expected"):
            compare(Untraceable(), [":output"], torch.randn(B, 8), **{**FAST, option: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_cuda_raises() -> None:
    with pytest.raises(InvalidArgumentError, match="CUDA is not available"):
        compare(linear_chain(), ["1"], torch.randn(B, 8), **{**FAST, "device": "cuda"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_and_device_time() -> None:
    model = linear_chain()
    report = compare(model, ["1"], torch.randn(B, 8), **{**FAST, "device": "cuda"})
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    for v in report.variants:
        assert v.cuda_peak_bytes is not None and v.cuda_peak_bytes > 0
        assert len(v.device_samples) == 3 and all(s > 0 for s in v.device_samples)


def test_statistics_helpers() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0
    assert bootstrap_median_ci([1.0, 2.0, 3.0, 4.0]) == bootstrap_median_ci([1.0, 2.0, 3.0, 4.0])
    low, high = bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low <= 3.0 <= high <= 5.0
    assert bimodal([1.0, 1.01, 1.02, 1.0, 2.0, 2.01, 2.02, 2.0])
    assert not bimodal([1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07])


def test_attention_matrix_products_are_counted() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    length, dim, heads = 5, 8, 2
    gm = trace(Attention().eval(), training=False).graph_module
    with torch.no_grad():  # the fused inference path must not hide the products
        counted = count_flops(gm, (torch.randn(B, length, dim),))
    projections = 2 * B * length * dim * (3 * dim) + 2 * B * length * dim * dim
    products = 2 * (2 * B * heads * length * length * (dim // heads))  # q·kᵀ and weights·v
    assert counted.total == projections + products
    assert not any("attention" in op for op in counted.uncounted)


def test_json_carries_the_headline_figures_of_the_table(
    linear_report: CostReport, tmp_path
) -> None:
    path = tmp_path / "cost.json"
    linear_report.to_json(path)
    summary = json.loads(path.read_text())["summary"]
    assert summary == {
        "total_flops": linear_report.total_flops,
        "kept_flops": linear_report.kept_flops,
        "kept_fraction": linear_report.kept_fraction,
        "ideal_time_s": linear_report.ideal_time,
        "efficiency": linear_report.efficiency,
        "speedup": linear_report.speedup,
        "possible_speedup": linear_report.possible_speedup,
    }
    table = linear_report.table()
    assert f"{linear_report.efficiency:.2f}" in table and f"{summary['kept_fraction']:.1%}" in table
    assert CostReport.from_json(path) == linear_report  # the summary is derived, not read back


class _Terminal:
    """A stream that says it is a terminal."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_redraws_only_on_a_terminal(capsys) -> None:
    from fxtap.cost._time import Progress

    terminal = _Terminal()
    shown = Progress(True, stream=terminal)
    shown.show("timing")
    shown.done()
    assert "\r" in terminal.text and "timing" in terminal.text
    # stderr under pytest is a pipe, as in a log: progress=True writes nothing there.
    compare(linear_chain(), ["1"], torch.randn(B, 8), **{**FAST, "progress": True})
    assert "\r" not in capsys.readouterr().err


# --- capture extractors (the root forward cannot be traced) ---------------------------------------


def _flops(fn: object, *args: object) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)  # type: ignore[operator]
    return int(counter.get_total_flops())


def test_capture_extractor_flops_stop_at_the_early_exit() -> None:
    from support.models import ListPipeline

    torch.manual_seed(0)
    model = ListPipeline().eval()
    images = torch.rand(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="cannot trace the root"):
        report = compare(model, ["body.conv2"], (images,), **FAST)
    # independent references: FlopCounterMode around the eager model and its first body call
    full = _flops(model, images)
    first_body = _flops(model.body, images[0][None])
    assert full > 2 * first_body > 0
    assert report.total_flops == full
    assert report.kept_flops == first_body  # the tap is in the first call of the island
    assert report.kept_fraction < 1
    rows = {n.name: n for n in report.nodes}
    assert rows["body"].kept and rows["body"].flops == first_body
    assert not rows["body (after the exit)"].kept  # the second image's call
    assert not rows["head.fc"].kept and rows["head.fc"].flops == _flops(
        model.head.fc, torch.rand(2, 6)
    )
    assert sum(n.flops for n in report.nodes) == full
    assert [v.name for v in report.variants] == ["full", "hooks", "extractor"]
    assert all(len(v.samples) == FAST["rounds"] and v.median > 0 for v in report.variants)
    assert "capture extractor" in report.notes[0]
    assert "body.conv2" in report.table()
    assert not model.training and not model.body.conv1._forward_hooks


def test_capture_extractor_without_early_exit_keeps_everything() -> None:
    from support.models import ListPipeline

    model = ListPipeline().eval()
    images = torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="cannot trace the root"):
        report = compare(model, {"head.fc": "fc", "body.relu": "r"}, (images,), **FAST)
    assert report.kept_flops == report.total_flops == _flops(model, images)
    assert "no early exit" in report.notes[0]
    # a node inside an island is no module output: the hooks variant is left out, and said why
    assert [v.name for v in report.variants] == ["full", "extractor"]
    assert "body.relu" in report.notes[1]
