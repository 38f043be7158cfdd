"""fxtap.split: ``tail(head(x))`` equals ``model(x)`` bitwise, the boundary holds the right values."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torch.export import Dim

import fxtap
from fxtap.errors import CutError, NodeNotFoundError
from support.checker import bitwise_equal, capture_reference, num_params, preserved
from support.models import DataDependent, ListRoot, TinyUNet, TrainOnlyBranch

X64 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X32 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X16 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def check_split(model: nn.Module, at: Any, x: torch.Tensor, keys: list[str] | None = None) -> None:
    """``tail(head(x))`` against ``model(x)`` bitwise in both modes (same seed), the boundary's
    values against a full run of the model, fewer parameters in each half, an untouched boundary."""
    was = model.training
    halves = fxtap.split(model, at)
    head, tail = halves
    assert model.training == was
    assert head.training == was and tail.training == was
    assert num_params(head) < num_params(model)
    assert num_params(tail) < num_params(model)
    for mode in ("eval", "train"):
        training = mode == "train"
        model.train(training)
        head.train(training)
        tail.train(training)
        # NOTE: no_grad as in capture_reference: MultiheadAttention takes its fast path then
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            expected = model(x)
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            boundary = head(x)
            cached = {
                k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in boundary.items()
            }
            got = tail(boundary)
        assert bitwise_equal(got, expected), f"tail(head(x)) differs from model(x) in {mode} mode"
        assert bitwise_equal(boundary, cached), f"the tail wrote into its boundary in {mode} mode"
        assert list(boundary) == list(halves.boundary[mode])
        if keys is not None:
            assert list(boundary) == keys
        for name in halves.at[mode]:
            assert name in boundary
        reference, _ = capture_reference(
            model, (x,), training=training, names=set(boundary), cross_check=False
        )
        for key, value in boundary.items():
            assert bitwise_equal(value, reference[key]), f"boundary value {key!r} ({mode})"
        head.graph.lint()
        tail.graph.lint()
    model.train(was)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50().eval()


@pytest.mark.parametrize(
    ("at", "keys"),
    [
        ("layer1", ["layer1.2.relu_2"]),
        # the tail's downsample branch reads layer1's output: a skip across the cut
        ("layer2.0.bn1", ["layer1.2.relu_2", "layer2.0.bn1"]),
        ("layer3.2.add", ["layer3.2.add"]),
        (["layer2", "layer4.0.conv1"], ["layer2.3.relu_2", "layer3.5.relu_2", "layer4.0.conv1"]),
    ],
    ids=["layer1", "bn-before-inplace-relu", "add", "two-cuts"],
)
def test_resnet50(resnet50: nn.Module, at: Any, keys: list[str]) -> None:
    check_split(resnet50, at, X64, keys)


@pytest.mark.parametrize(
    ("at", "keys"),
    [
        ("enc2", ["x", "enc1.2", "enc2.2"]),
        # encoder features and the input cross the cut to the decoder
        ("mid", ["x", "enc1.2", "enc2.2", "mid.1"]),
        # the in-place ReLU after the cut writes into a copy, not into the boundary
        ("dec2.1", ["x", "enc1.2", "dec2.1"]),
        (["enc1", "mid.0.0"], ["x", "enc1.2", "enc2.2", "mid.0.0"]),
        ("up1", ["x", "enc1.2", "up1"]),
    ],
)
def test_unet_skips_cross_the_cut(at: Any, keys: list[str]) -> None:
    torch.manual_seed(0)
    check_split(TinyUNet(), at, X16, keys)


def test_vit_b_16() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=32).eval()
    # conv_proj: the batch size and the patch grid, read from x.shape before the cut, cross it
    # as ints
    check_split(model, "conv_proj", X32, ["getitem", "floordiv", "floordiv_1", "conv_proj"])
    check_split(
        model,
        "encoder.layers.encoder_layer_5.ln_2",
        X32,
        ["encoder.layers.encoder_layer_5.add", "encoder.layers.encoder_layer_5.ln_2"],
    )
    check_split(
        model, "encoder.layers.encoder_layer_10", X32, ["encoder.layers.encoder_layer_10.add_1"]
    )


def test_densenet121() -> None:
    torch.manual_seed(0)
    model = torchvision.models.densenet121().eval()
    check_split(model, "features.denseblock1", X64, ["features.denseblock1.cat"])
    # inside a dense block every earlier feature map of the block crosses the cut
    check_split(
        model,
        "features.denseblock2.denselayer3",
        X64,
        [
            "features.transition1.pool",
            "features.denseblock2.denselayer1.conv2",
            "features.denseblock2.denselayer2.conv2",
            "features.denseblock2.denselayer3.conv2",
        ],
    )
    check_split(model, "features.transition3.conv", X64, ["features.transition3.conv"])


def test_cut_in_a_sequential_whose_names_are_numbers() -> None:
    torch.manual_seed(0)
    stack = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(4)])
    check_split(stack, "2.0", torch.rand(3, 4), ["2.0"])
    check_split(stack, ["0", "2.0"], torch.rand(3, 4), ["0.1", "2.0"])


def test_cached_boundary_serves_many_tail_calls() -> None:
    model = TinyUNet().eval()
    head, tail = fxtap.split(model, "mid.0.1")
    boundary = head(X16)
    first = tail(boundary)
    assert bitwise_equal(tail(boundary), first)
    assert "clone" in tail.code


def test_gradients_flow_through_both_halves() -> None:
    model = TinyUNet().train()
    head, tail = fxtap.split(model, "mid")
    with preserved(model):
        tail(head(X16)).sum().backward()
        for module in (head, tail):
            for name, p in module.named_parameters():
                assert p.grad is not None, name
        for p in model.parameters():
            p.grad = None


def test_halves_share_the_model_parameters_and_free_the_rest() -> None:
    model = torchvision.models.resnet18()
    head, tail = fxtap.split(model, "layer2")
    names = dict(model.named_parameters())
    for half in (head, tail):
        for name, p in half.named_parameters():
            assert p is names[name]
    assert not any(n.startswith("layer3") for n, _ in head.named_parameters())
    assert not any(n.startswith("layer1") for n, _ in tail.named_parameters())


def test_split_result_names() -> None:
    halves = fxtap.split(TinyUNet(), "mid")
    assert halves.at == {"train": ("mid.1",), "eval": ("mid.1",)}
    assert halves.boundary["eval"] == ("x", "enc1.2", "enc2.2", "mid.1")
    assert halves.tail.node_names("eval")[:4] == ["x", "enc1.2", "enc2.2", "mid.1"]
    assert "up2" in halves.tail.node_names("eval")
    assert "up2" not in halves.head.node_names("eval")


def test_halves_called_from_many_threads_equal_serial_calls() -> None:
    """Eight threads call one head, and one tail on one shared cached boundary per input (the
    tail clones what its in-place ReLU writes): every result equals the serial one bitwise,
    and the cached boundaries stay as the head returned them."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    model = TinyUNet().eval()
    head, tail = fxtap.split(model, "mid.0.1")
    inputs = [
        torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)
    ]
    with torch.no_grad():
        boundaries = [head(x) for x in inputs]
        cached = [{k: v.clone() for k, v in b.items()} for b in boundaries]
        serial = [tail(b) for b in boundaries]
    barrier = threading.Barrier(8)

    def work(worker: int) -> list[tuple[int, int, str]]:
        wrong = []
        barrier.wait()
        with torch.no_grad():
            for call in range(20):
                i = (worker + call) % len(inputs)
                if not bitwise_equal(head(inputs[i]), cached[i]):
                    wrong.append((worker, call, "head"))
                if not bitwise_equal(tail(boundaries[i]), serial[i]):
                    wrong.append((worker, call, "tail"))
        return wrong

    with ThreadPoolExecutor(8) as pool:
        wrong = [w for found in pool.map(work, range(8)) for w in found]
    assert wrong == []
    assert all(bitwise_equal(b, c) for b, c in zip(boundaries, cached, strict=True))
    assert "clone" in tail.code  # the path that writes into a copy ran in every call


# --- cuts that cannot be made ------------------------------------------------------------------


def test_node_of_one_mode_only_is_refused_with_the_nearest_cut() -> None:
    with pytest.raises(CutError, match=r"'randn_like'.*train graph.*nearest cut: 'fc'") as info:
        fxtap.split(TrainOnlyBranch(), "randn_like")
    assert info.value.nearest == "fc"
    assert isinstance(info.value, ValueError)


def test_node_inside_an_opaque_module_is_refused() -> None:
    with pytest.warns(UserWarning), pytest.raises(CutError, match=r"inside 'gate'") as info:
        fxtap.split(DataDependent(), "gate.neg")
    assert info.value.nearest == "gate"


def test_model_only_the_capture_path_runs_is_refused() -> None:
    with pytest.raises(CutError, match=r"capture path.*example_inputs="):
        fxtap.split(ListRoot(), "body")


def test_model_output_is_refused() -> None:
    with pytest.raises(CutError, match="model's output"):
        fxtap.split(TinyUNet(), ":output")


def test_unknown_node_names_the_closest() -> None:
    with pytest.raises(NodeNotFoundError, match="closest: 'mid"):
        fxtap.split(TinyUNet(), "midd")


def test_torch_export_of_both_halves() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    head, tail = fxtap.split(model, "mid")
    head_program = torch.export.export(head, (X16,))
    with torch.no_grad():
        boundary = head(X16)
        exported = head_program.module()(X16)
        assert bitwise_equal(exported, boundary)
        assert type(exported) is dict  # not torch.fx's immutable_dict, a pytree type of its own
        tail_program = torch.export.export(tail, (boundary,))
        # the exported halves chain as the halves do, in either order of export
        assert bitwise_equal(tail_program.module()(exported), model(X16))
        assert bitwise_equal(tail_program.module()(head_program.module()(X16)), model(X16))
        assert bitwise_equal(tail(exported), model(X16))
        resaved = torch.export.export(tail, (exported,))
        assert bitwise_equal(resaved.module()(boundary), model(X16))


@pytest.mark.parametrize("fmt", ["fxtap", "pickle"])
def test_both_halves_save_and_load(tmp_path: Any, fmt: str) -> None:
    torch.manual_seed(0)
    model = TinyUNet()
    head, tail = fxtap.split(model, "mid.0.1")
    new_head = fxtap.load(fxtap.save(head, tmp_path / "head.fxtap", fmt=fmt), trust=True)
    new_tail = fxtap.load(fxtap.save(tail, tmp_path / "tail.fxtap", fmt=fmt), trust=True)
    for training in (False, True):
        for module in (head, tail, new_head, new_tail):
            module.train(training)
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            expected = tail(head(X16))
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            boundary = new_head(X16)
            assert list(boundary) == list(head(X16))
            assert bitwise_equal(new_tail(boundary), expected)


def test_render_marks_the_cut(tmp_path: Any) -> None:
    head, tail = fxtap.split(TinyUNet(), "mid")
    for half, cut, crossing in ((head, 1, 3), (tail, 1, 3)):
        rendering = fxtap.render(
            half, mode="eval", fmt="dot", out_dir=tmp_path, max_nodes=None, fold_repeats=False
        )
        text = rendering.paths[0].read_text(encoding="utf-8")
        assert text.count("✂ cut here") == cut
        assert text.count("✂ crosses the cut") == crossing
        assert 'class="pruned"' not in text  # each half runs all it holds, its output too


# --- command line ------------------------------------------------------------------------------


def test_cli_split_writes_both_halves(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from fxtap.cli import main

    args = ["split", "torchvision:resnet18", "--at", "layer2.0.bn1", "-o", str(tmp_path)]
    assert main([*args, "--input", "1x3x64x64"]) == 0
    out = capsys.readouterr().out
    assert "layer1.1.relu_1  1x64x16x16 float32" in out
    assert "equals the model's output bitwise" in out
    head = fxtap.load(tmp_path / "head.fxtap")
    tail = fxtap.load(tmp_path / "tail.fxtap")
    assert list(head.outputs["eval"]) == ["layer1.1.relu_1", "layer2.0.bn1"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert tail(head(x)).shape == (1, 1000)


def test_cli_split_says_the_nearest_cut_in_flags(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from fxtap.cli import main

    spec = "tests/support/models.py:TrainOnlyBranch"
    out = tmp_path / "halves"
    assert main(["split", spec, "--at", "randn_like", "-o", str(out), "--input", "2x4"]) == 1
    assert "nearest cut: 'fc'. Pass --at fc" in capsys.readouterr().err
    assert not out.exists()


UNET = "tests/support/models.py:TinyUNet"


@pytest.fixture(scope="module")
def saved_halves(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """TinyUNet cut at ``mid`` by ``fxtap split``: the encoder features and the input cross."""
    from fxtap.cli import main

    folder = tmp_path_factory.mktemp("halves")
    assert main(["split", UNET, "--at", "mid", "-o", str(folder), "--input", "2x3x16x16"]) == 0
    return folder


@pytest.mark.parametrize("half", ["head", "tail"])
def test_cli_nodes_of_both_halves(
    saved_halves: Any, half: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fxtap.cli import main

    capsys.readouterr()
    path = str(saved_halves / f"{half}.fxtap")
    assert main(["nodes", path]) == 0
    plain = capsys.readouterr().out
    assert main(["nodes", path, "--input", "2x3x16x16"]) == 0
    shaped = capsys.readouterr().out
    if half == "head":
        assert plain.splitlines()[1].startswith("x ")
        assert "enc2.2" in plain and "up2" not in plain
        assert "2x8x8x8" in shaped  # enc2's output
    else:
        # the boundary dict, then one item per key, then the decoder, with the head's shapes
        assert plain.splitlines()[1].split()[:2] == ["boundary", "placeholder"]
        assert "up2" in plain and "enc1.0" not in plain
        assert "{x: 2×3×16×16 float32, enc1.2: 2×4×16×16 float32" in shaped
        assert "2x3x16x16" in shaped.splitlines()[-1]  # the model's output


@pytest.mark.parametrize("half", ["head", "tail"])
def test_cli_render_of_both_halves_marks_the_cut(
    saved_halves: Any, half: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from fxtap.cli import main

    path = str(saved_halves / f"{half}.fxtap")
    argv = ["render", path, "-o", str(tmp_path), "--format", "dot", "--mode", "eval"]
    assert main([*argv, "--input", "2x3x16x16"]) == 0
    (dot,) = tmp_path.glob("*.eval.dot")
    text = dot.read_text(encoding="utf-8")
    # the marks survive the file: the cut node and the three values crossing with it
    assert text.count("✂ cut here") == 1
    assert text.count("✂ crosses the cut") == 3
    assert "2×16×4×4 float32" in text  # mid's shape, from the head's run on --input


@pytest.mark.filterwarnings("ignore:latency of:UserWarning")  # a loaded machine, short timings
def test_cli_bench_of_both_halves(saved_halves: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from fxtap.cli import main

    budget = ["--input", "2x3x16x16", "--rounds", "2", "--min-run-time", "0.01", "--threads", "1"]
    capsys.readouterr()
    assert main(["bench", str(saved_halves / "head.fxtap"), "--nodes", "enc2", *budget]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TinyUNetHead -> enc2.2") and "extractor" in out
    # the tail runs on the head's output on --input, found beside it
    assert main(["bench", str(saved_halves / "tail.fxtap"), "--nodes", "dec2", *budget]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TinyUNetTail -> dec2.2") and "hooks" in out and "extractor" in out


def test_cli_tail_needs_its_head(
    saved_halves: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from fxtap.cli import main

    alone = tmp_path / "tail.fxtap"
    shutil.copy(saved_halves / "tail.fxtap", alone)
    capsys.readouterr()
    assert main(["nodes", str(alone), "--input", "2x3x16x16"]) == 1
    err = capsys.readouterr().err
    assert "is the tail of a split" in err and "Pass --head FILE" in err
    # --head names it from elsewhere; without --input the tail needs no head
    head = ["--head", str(saved_halves / "head.fxtap")]
    assert main(["nodes", str(alone), "--input", "2x3x16x16", *head]) == 0
    assert main(["nodes", str(alone)]) == 0
    capsys.readouterr()
    assert main(["nodes", str(alone), "--input", "2x3x16x16", "--head", str(alone)]) == 1
    assert "is a tail too" in capsys.readouterr().err
    assert main(["nodes", str(saved_halves / "head.fxtap"), *head]) == 1
    assert "is no tail" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["split", UNET, "--at", "enc1", "-o", str(other), "--input", "2x3x16x16"]) == 0
    capsys.readouterr()
    assert main(["nodes", str(alone), "--input", "2x3x16x16", "--head", str(other / "head.fxtap")])
    assert "different splits" in capsys.readouterr().err


def test_compare_takes_a_tail_and_its_boundary() -> None:
    from fxtap.cost import compare

    torch.manual_seed(0)
    head, tail = fxtap.split(TinyUNet().eval(), "mid")
    with torch.no_grad():
        boundary = head(X16)
    options = {"rounds": 2, "min_run_time": 0.01, "progress": False, "node_repeats": 0}
    options["noise_threshold"] = None
    for example in (boundary, (boundary,)):
        report = compare(tail, ["dec2"], example, threads=1, **options)
        assert report.outputs == {"dec2": "dec2.2"}
        assert 0 < report.kept_fraction < 1
    with pytest.raises(fxtap.errors.InvalidArgumentError, match=r"example_inputs=head\(x\)"):
        compare(head, ["enc2"], boundary, threads=1, **options)


# --- the export path (Hugging Face models) -------------------------------------------------------


#: (model, cut, boundary keys): the attention mask, the batch size and sequence length (ints:
#: every input dimension is dynamic on the export path) and llama's rotary embeddings cross the
#: cut with the residual stream.
HF_CUTS = [
    ("bert", "embeddings", ["attention_mask", "sym_size", "sym_size_1", "embeddings.dropout"]),
    ("bert", "encoder.layer.0.attention.output.add",
     ["sym_size", "sym_size_1", "expand", "encoder.layer.0.attention.output.add"]),
    ("bert", "encoder.layer.1",
     ["sym_size", "sym_size_1", "expand", "encoder.layer.1.output.LayerNorm"]),
    ("llama", "embed_tokens", ["attention_mask", "sym_size", "sym_size_1", "embed_tokens"]),
    ("llama", "layers.0.add",
     ["sym_size", "sym_size_1", "expand", "rotary_emb.to_2", "rotary_emb.to_3", "layers.0.add"]),
    ("llama", "layers.1.mlp.act_fn",
     ["sym_size", "sym_size_1", "expand", "rotary_emb.to_2", "rotary_emb.to_3",
      "layers.1.add", "layers.1.post_attention_layernorm.mul_1",
      "layers.1.mlp.act_fn.silu"]),
    ("llama", "layers.2", ["layers.2.add_1"]),
]  # fmt: skip


#: sequence lengths the halves, built at 8 tokens, are called at: the export path makes the
#: batch size and the sequence length dynamic
HF_LENGTHS = (8, 7, 20)


@functools.cache
def _hf_model(name: str) -> tuple[nn.Module, dict[str, Any]]:
    from support.hf import build_hf

    return build_hf(name)


@functools.cache
def _hf_split(name: str, at: str) -> fxtap.Split:
    model, inputs = _hf_model(name)
    return fxtap.split(model, at, example_inputs=inputs)


def _hf_text(seq: int) -> dict[str, torch.Tensor]:
    from support.hf import _text

    return _text(seq)


@pytest.mark.hf
@pytest.mark.parametrize(("name", "at", "keys"), HF_CUTS, ids=[f"{c[0]}-{c[1]}" for c in HF_CUTS])
def test_hugging_face_models_on_the_export_path(name: str, at: str, keys: list[str]) -> None:
    model, _ = _hf_model(name)
    halves = _hf_split(name, at)
    head, tail = halves
    assert num_params(head) < num_params(model) and num_params(tail) < num_params(model)
    for training in (False, True):
        for module in (model, head, tail):
            module.train(training)
        for seq in HF_LENGTHS:
            inputs = _hf_text(seq)
            with preserved(model), torch.no_grad():
                torch.manual_seed(0)
                expected = model(**inputs)
            with preserved(model), torch.no_grad():
                torch.manual_seed(0)
                boundary = head(**inputs)
                got = tail(boundary)
            assert list(boundary) == keys
            assert list(boundary) == list(halves.boundary["train" if training else "eval"])
            assert got.last_hidden_state.shape[:2] == (2, seq)
            for key in ("last_hidden_state", "pooler_output"):
                if key in expected:
                    assert bitwise_equal(got[key], expected[key]), f"{name} at {at}, {seq}: {key}"
    model.eval()


def _dynamic(value: Any) -> Any:
    """``dynamic_shapes`` making every dim (or int) of ``value`` dynamic, where export can."""
    if isinstance(value, dict):
        return {k: _dynamic(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return {i: Dim.AUTO for i in range(value.dim())}
    return Dim.AUTO


@pytest.mark.hf
@pytest.mark.parametrize(("name", "at", "keys"), HF_CUTS, ids=[f"{c[0]}-{c[1]}" for c in HF_CUTS])
def test_torch_export_of_hugging_face_halves(name: str, at: str, keys: list[str]) -> None:
    """Both halves export, statically and with batch and sequence dynamic; the exported
    programs give the eager halves' values and chain into the model's output."""
    model, inputs = _hf_model(name)
    head, tail = _hf_split(name, at)
    for module in (model, head, tail):
        module.eval()
    with torch.no_grad():
        boundary = head(**inputs)
    static_head = torch.export.export(head, (), inputs).module()
    static_tail = torch.export.export(tail, (boundary,)).module()
    with torch.no_grad():
        exported = static_head(**inputs)
        assert type(exported) is dict and list(exported) == keys
        assert bitwise_equal(exported, boundary)
        got = static_tail(exported)
        assert bitwise_equal(got.last_hidden_state, model(**inputs).last_hidden_state)
    dynamic_head = torch.export.export(head, (), inputs, dynamic_shapes=_dynamic(inputs)).module()
    dynamic_tail = torch.export.export(
        tail, (boundary,), dynamic_shapes=(_dynamic(boundary),)
    ).module()
    for seq in HF_LENGTHS:
        text = _hf_text(seq)
        with torch.no_grad():
            eager = head(**text)
            exported = dynamic_head(**text)
            assert bitwise_equal(exported, eager), f"exported head at {seq} tokens"
            got = dynamic_tail(exported).last_hidden_state
            assert bitwise_equal(got, tail(eager).last_hidden_state), f"tail at {seq} tokens"
            assert bitwise_equal(got, model(**text).last_hidden_state)


class TwoBranches(nn.Module):
    """Two branches of the input; ``side`` runs before ``main`` or after it."""

    def __init__(self, side_first: bool) -> None:
        super().__init__()
        self.side_first = side_first
        self.main = nn.Linear(4, 4)
        self.side = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side_first:
            s = self.side(x)
            m = self.main(x)
        else:
            m = self.main(x)
            s = self.side(x)
        return m.relu() + s


@pytest.mark.parametrize(
    ("side_first", "keys", "in_head"),
    [(True, ["side", "main"], True), (False, ["x", "main"], False)],
    ids=["before-the-cut", "after-the-cut"],
)
def test_ops_independent_of_the_cut_run_where_they_come(
    side_first: bool, keys: list[str], in_head: bool
) -> None:
    model = TwoBranches(side_first)
    halves = fxtap.split(model, "main")
    assert list(halves.boundary["eval"]) == keys

    def runs_side(half: nn.Module) -> bool:
        return any(n.op == "call_module" and n.target == "side" for n in half.graph.nodes)

    assert runs_side(halves.head) is in_head
    assert runs_side(halves.tail) is not in_head
    x = torch.rand(2, 4)
    with torch.no_grad():
        assert bitwise_equal(halves.tail(halves.head(x)), model(x))
