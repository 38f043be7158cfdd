"""The node table, the renderer, ``compare`` and the command line on export-path graphs.

Export-path graphs hold ATen ops with ``nn_module_stack`` meta (fxtap.trace._export); these
tests check that every tool built for torch.fx graphs reads them right: names by
NodePathTracer's rules, module clusters, short op labels, costs. Hugging Face models are tiny
configs from ``from_config`` (marked ``hf``); torchvision's resnet18 takes ``tracer="export"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap.cli import main
from fxtap.cost import compare
from fxtap.names import get_graph_node_names, node_table
from fxtap.render import render
from fxtap.trace import NodePathTracer
from support.hf import build_hf

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
FAST = {"threads": 1, "rounds": 5, "min_run_time": 0.02, "progress": False}
FAST |= {"node_repeats": 0, "profile_memory": False, "noise_threshold": None}
#: A leaf module in the middle layer of each tiny model (3 layers).
MIDDLE = {"bert": "encoder.layer.1", "gpt2": "h.1", "llama": "layers.1"}


def _leaf_calls(model: nn.Module, inputs: Any) -> list[str]:
    """Paths of the leaf modules (NodePathTracer's rule) that ran, by forward hooks."""
    tracer = NodePathTracer()
    ran: dict[str, None] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, path=path: ran.setdefault(path, None))
        for path, m in model.named_modules()
        if path and tracer.is_leaf_module(m, path)
    ]
    try:
        with torch.no_grad():
            model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        for h in handles:
            h.remove()
    return list(ran)


def _check_names(model: nn.Module, rows: list[Any], inputs: Any) -> None:
    """Leaf calls by module path; every other op by its scope plus its ATen op name."""
    modules = dict(model.named_modules())
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    leaves = _leaf_calls(model, inputs)
    assert leaves and set(leaves) <= set(names), set(leaves) - set(names)
    for row in rows:
        assert "torch._ops" not in row.target and "::" not in row.target, row
        if row.op == "placeholder" or row.target == "fxtap.trace._export.rebuild_output":
            continue  # the inputs, and the model's own output type (a ModelOutput)
        # ATen ops, and getitem reading one value of a multi-output op
        assert row.op == "call_function", row
        assert row.target.startswith("aten.") or row.target == "getitem", row
        path = re.sub(r"_\d+$", "", row.name) if row.name not in modules else row.name
        if path in leaves:  # a leaf call (``relu_1``: its second call), typed as its module
            assert row.module_type == type(modules[path]).__name__, row
            own = sum(p.numel() for p in modules[path].parameters())
            assert row.num_params == own, row
            continue
        scope, _, op = row.name.rpartition(".")
        assert scope in modules, row
        op_name = row.target.split(".")[1] if "." in row.target else row.target
        assert re.fullmatch(rf"{re.escape(op_name)}(_\d+)?", op), row


# ---------------------------------------------------------------- node table


def test_node_table_of_resnet18_on_the_export_path() -> None:
    model = torchvision.models.resnet18()
    rows = node_table(model, example_inputs=X, tracer="export")
    _check_names(model, rows, X)
    traced = fxtap.trace(model, training=False, tracer="export", example_inputs=X)
    assert [r.name for r in rows] == list(traced.names.values())
    train, evaluated = get_graph_node_names(
        model, tracer="export", example_inputs=X, suppress_diff_warning=True
    )
    assert evaluated == [r.name for r in rows]
    # batch norm counts its batches in train mode only: export's add_ on num_batches_tracked
    assert "bn1.add_" in train and "bn1.add_" not in evaluated
    # module types as on the fx path: the class of the leaf, none at the root
    fx_types = {r.name: r.module_type for r in node_table(model, tracer="fx")}
    types = {r.name: r.module_type for r in rows}
    assert all(types[k] == fx_types[k] for k in ("x", "conv1", "layer1.0.bn1", "flatten", "fc"))
    shapes = {r.name: r.shape for r in rows}
    assert "layer2" not in shapes and shapes["layer2.1.relu_1"] == (2, 128, 4, 4)
    assert shapes["fc"] == (2, 1000)


@pytest.mark.hf
@pytest.mark.parametrize("arch", list(MIDDLE))
def test_node_table_of_transformers_lists_every_node(arch: str) -> None:
    model, inputs = build_hf(arch)
    rows = node_table(model, example_inputs=inputs)  # auto: the root fails in torch.fx
    _check_names(model, rows, inputs)
    _, evaluated = get_graph_node_names(model, example_inputs=inputs, suppress_diff_warning=True)
    assert evaluated == [r.name for r in rows]
    # shapes are those eager execution gives
    modules = dict(model.named_modules())
    leaf = next(r for r in rows if r.name.startswith(MIDDLE[arch]) and r.name in modules)
    seen: dict[str, torch.Size] = {}

    def keep_shape(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        seen.setdefault("shape", out.shape)

    handle = modules[leaf.name].register_forward_hook(keep_shape)
    with torch.no_grad():
        model.eval()(**inputs)
    handle.remove()
    assert leaf.shape == tuple(seen["shape"]) and leaf.dtype == "float32"


# ---------------------------------------------------------------- render


def _dot_nodes(text: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*"([^"]+)" \[(id=.*)\];$', text, re.M))


def _clusters(text: str) -> set[str]:
    return set(re.findall(r'subgraph "cluster_([^"]+)"', text))


@pytest.mark.hf
def test_render_of_a_transformers_extractor_draws_module_clusters(tmp_path: Path) -> None:
    model, inputs = build_hf("bert")
    ex = fxtap.create_feature_extractor(
        model, ["encoder.layer.1"], example_inputs=inputs, keep_traces=True
    )
    result = render(ex, mode="both", fmt="dot", out_dir=tmp_path, max_nodes=None)
    assert sorted(p.name for p in result.paths) == [
        "BertModel.both.dot",
        "BertModel.eval.dot",
        "BertModel.train.dot",
    ]
    for mode in ("train", "eval"):
        text = (tmp_path / f"BertModel.{mode}.dot").read_text()
        nodes, clusters = _dot_nodes(text), _clusters(text)
        # clusters are the modules of nn_module_stack, nested as the model is
        for path in ("encoder", "encoder.layer.1", "encoder.layer.1.attention.self", "pooler"):
            assert path in clusters, (mode, path)
        # a leaf call of one op is drawn in its parent, not as a cluster of one
        query = "encoder.layer.1.attention.self.query"
        assert query in nodes and query not in clusters
        assert "aten.linear" in nodes[query] and "self.query</b>" in nodes[query]
        labels = " ".join(nodes.values())
        assert "torch._ops" not in labels and "aten::" not in labels and ".default" not in labels
        assert "aten.add<" in labels  # the overload (aten.add.Tensor) is left to the tooltip
        tap = nodes["encoder.layer.1.output.LayerNorm"]
        assert 'penwidth="3"' in tap and "⇒ output" in tap and 'class="kept requested"' in tap
        # NOTE: "@refs" nodes draw kept values a pruned op read (the input's dynamic sizes)
        later = [v for k, v in nodes.items() if k.startswith("encoder.layer.2.") and "@" not in k]
        assert later and all(re.search(r'class="pruned[" ]', v) for v in later)
        assert not any("_assert_tensor_metadata" in k for k in nodes)
        assert "input-check nodes hidden" in text
    eval_nodes = _dot_nodes((tmp_path / "BertModel.eval.dot").read_text())
    assert "differs in train/eval" in eval_nodes["encoder.layer.1.output.dropout"]


@pytest.mark.hf
def test_render_of_a_transformers_model_with_keyword_inputs(tmp_path: Path) -> None:
    model, inputs = build_hf("llama")
    render(
        model,
        mode="eval",
        fmt="dot",
        out_dir=tmp_path,
        example_inputs=inputs,
        max_nodes=None,
        fold_repeats=False,
    )
    nodes = _dot_nodes((tmp_path / "LlamaModel.eval.dot").read_text())
    assert "2×8×32 float32" in nodes["layers.1.self_attn.q_proj"]
    assert "layers.1.self_attn" in _clusters((tmp_path / "LlamaModel.eval.dot").read_text())


def test_render_of_resnet18_with_tracer_export(tmp_path: Path) -> None:
    model = torchvision.models.resnet18()
    render(
        model, mode="both", fmt="dot", out_dir=tmp_path, nodes=["layer2"], example_inputs=X,
        tracer="export", max_nodes=None,
    )  # fmt: skip
    train = _dot_nodes((tmp_path / "ResNet.train.dot").read_text())
    evaluated = _dot_nodes((tmp_path / "ResNet.eval.dot").read_text())
    assert "train only" in train["layer1.0.bn1.add_"] and "layer1.0.bn1.add_" not in evaluated
    assert (
        "aten.conv2d" in evaluated["layer1.0.conv1"] and "2×64×8×8" in evaluated["layer1.0.conv1"]
    )
    assert "⇒ output" in evaluated["layer2.1.relu_1"] and 'class="pruned"' in evaluated["fc"]
    with pytest.raises(fxtap.InvalidArgumentError, match=r"'exprt'.*closest: 'export'"):
        render(model, fmt="dot", out_dir=tmp_path, tracer="exprt")


# ---------------------------------------------------------------- compare


def test_compare_on_the_export_path_counts_what_the_fx_path_counts() -> None:
    model = torchvision.models.resnet18()
    by_export = compare(model, ["layer2"], X, tracer="export", **FAST)
    by_fx = compare(model, ["layer2"], X, tracer="fx", **FAST)
    assert by_export.outputs == by_fx.outputs == {"layer2": "layer2.1.relu_1"}
    assert by_export.total_flops == by_fx.total_flops > 0
    assert by_export.kept_flops == by_fx.kept_flops < by_fx.total_flops
    assert by_export.kept_params == by_fx.kept_params < by_export.full_params


@pytest.mark.hf
def test_compare_of_a_transformers_model_tapped_in_the_middle() -> None:
    model, inputs = build_hf("bert")
    args = (inputs["input_ids"], inputs["attention_mask"])
    report = compare(model, [MIDDLE["bert"]], args, **FAST)  # auto: torch.export
    assert report.outputs == {"encoder.layer.1": "encoder.layer.1.output.LayerNorm"}
    assert 0 < report.kept_flops < report.total_flops
    assert 0.3 < report.kept_fraction < 0.9
    # time: the median of the paired per-round ratios extractor / full
    assert report.variant("extractor").ratio < 1.0
    assert any(n.target == "aten.linear" and n.flops > 0 for n in report.nodes)


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("command", ["nodes", "extract", "render", "bench"])
def test_cli_tracer_flag(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--tracer {auto,fx,export}" in text and "(default: auto)" in text
    assert main([command, "torchvision:resnet18", "--tracer", "exprt", "--nodes", "fc"]) == 2
    assert "invalid choice: 'exprt'" in capsys.readouterr().err


def test_cli_nodes_and_render_with_tracer_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "nodes.json"
    argv = ["torchvision:resnet18", "--tracer", "export", "--input", "2x3x32x32"]
    assert main(["nodes", *argv, "--json", str(table)]) == 0
    rows = {r["name"]: r for r in json.loads(table.read_text())}
    conv = rows["layer1.0.conv1"]
    assert (conv["target"], conv["module_type"], conv["num_params"]) == (
        "aten.conv2d",
        "Conv2d",
        36864,
    )
    assert conv["shape"] == [2, 64, 8, 8] and "layer4.1.add_" in rows and "fc" in rows
    assert main(["nodes", "torchvision:resnet18", "--tracer", "export"]) == 1
    assert "--input" in capsys.readouterr().err
    assert main(["render", *argv, "--nodes", "layer2", "-o", str(tmp_path), "--format", "dot"]) == 0
    nodes = _dot_nodes((tmp_path / "ResNet.eval.dot").read_text())
    assert "aten.conv2d" in nodes["layer1.0.conv1"] and "⇒ output" in nodes["layer2.1.relu_1"]


TINY_BERT = """
import transformers


def bert():
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
        vocab_size=100, max_position_embeddings=64,
    )
    return transformers.BertModel(config)
"""


@pytest.mark.hf
@pytest.mark.parametrize("tracer", ["export", "auto"])
def test_cli_on_a_transformers_model(
    tracer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    Path("tiny_bert.py").write_text(TINY_BERT)
    argv = ["tiny_bert.py:bert", "--tracer", tracer, "--input", "2x8:int64"]
    if tracer == "auto":  # the extractor --nodes builds: torch.fx fails, torch.export on --input
        assert main(["render", *argv, "--nodes", "encoder.layer.1", "--format", "dot"]) == 0
        assert (
            "⇒ output"
            in _dot_nodes(Path("BertModel.eval.dot").read_text())[
                "encoder.layer.1.output.LayerNorm"
            ]
        )
        return
    assert main(["nodes", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["encoder.layer.1.attention.self.query"][1:4] == [
        "call_function",
        "aten.linear",
        "Linear",
    ]
    assert rows["encoder.layer.1.attention.output.add"][2] == "aten.add.Tensor"
    assert main(["render", *argv, "--nodes", "encoder.layer.1", "--format", "dot", "-o", "."]) == 0
    capsys.readouterr()
    nodes = _dot_nodes(Path("BertModel.eval.dot").read_text())
    assert "⇒ output" in nodes["encoder.layer.1.output.LayerNorm"]
    assert 'class="pruned"' in nodes["encoder.layer.2.output.LayerNorm"]
