"""fxtap.edit and fxtap.edits: an edit compiled into the graph equals the same change made by a
forward hook on the unmodified model (module outputs) or by a hand-edited forward (functional
ops), bitwise, in both modes, gradients included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import fxtap
from fxtap.edits import Add, Input, Project, Replace, Scale, Zero
from fxtap.errors import InvalidArgumentError, NodeNotFoundError
from support.checker import bitwise_equal, preserved
from support.models import ListRoot, TinyUNet

X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
_G = torch.Generator().manual_seed(1)
#: the value of ``enc2`` (and of ``cat``'s half) on ``X``: (2, 8, 8, 8); ``cat``: (2, 16, 8, 8)
PATCH_ENC2 = torch.randn(2, 8, 8, 8, generator=_G)
PATCH_CAT = torch.randn(2, 16, 8, 8, generator=_G)


def _edits(channels: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "Zero()": lambda: Zero(),
        "Zero(1)": lambda: Zero(1),
        "Zero([0,3])": lambda: Zero([0, 3]),
        "Scale(0.5)": lambda: Scale(0.5),
        "Scale(tensor)": lambda: Scale(torch.rand(1, channels, 1, 1, generator=_seeded(2))),
        "Add": lambda: Add(torch.randn(channels, 1, 1, generator=_seeded(3))),
        "Project": lambda: Project(torch.randn(channels, generator=_seeded(4)), dim=1),
        "Replace": lambda: Replace(torch.randn(channels, 8, 8, generator=_seeded(5))),
        "Input": lambda: Input("patch"),
    }


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(module: nn.Module, model: nn.Module, training: bool, **kwargs: Any) -> Any:
    module.train(training)
    with preserved(model), torch.no_grad():
        torch.manual_seed(0)
        return module(X, **kwargs)


def _hooked(model: nn.Module, path: str, change: nn.Module, training: bool, patch: Any) -> Any:
    """The reference: the unmodified model with a forward hook that makes the change."""

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return change(out, patch) if isinstance(change, Input) else change(out)

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        return _run(model, model, training)
    finally:
        handle.remove()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("label", "make"), list(_edits(8).items()), ids=list(_edits(8)))
def test_module_output_edit_equals_a_forward_hook(
    label: str, make: Callable[[], nn.Module], mode: str
) -> None:
    torch.manual_seed(0)
    model = TinyUNet()
    change = make()
    edited = fxtap.edit(model, {"enc2": change})
    training = mode == "train"
    kwargs = {"patch": PATCH_ENC2} if label == "Input" else {}
    got = _run(edited, model, training, **kwargs)
    expected = _hooked(model, "enc2", make(), training, PATCH_ENC2)
    assert bitwise_equal(got, expected)
    assert not bitwise_equal(got, _run(model, model, training)), "the edit changed nothing"
    edited.graph.lint()
    assert "enc2.2.edit" in edited.node_names(mode)


class HandEdited(TinyUNet):
    """``TinyUNet`` with the change written into its forward, after ``torch.cat`` or the final
    ``+`` (functional ops no hook can reach)."""

    def __init__(self, at: str, change: nn.Module, patch: Any = None) -> None:
        super().__init__()
        # a plain list: the change is no submodule, so state dicts match TinyUNet's
        self.change = [change, patch]
        self.at = at

    def apply(self, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        change, patch = self.change
        return change(value, patch) if isinstance(change, Input) else change(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        c = torch.cat([self.up2(m), e2], 1)
        if self.at == "cat":
            c = self.apply(c)
        d2 = self.dec2(c)
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        out = self.out(d1) + x
        if self.at == "add":
            out = self.apply(out)
        return out


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("label", "make"), list(_edits(16).items()), ids=list(_edits(16)))
def test_functional_node_edit_equals_a_hand_edited_forward(
    label: str, make: Callable[[], nn.Module], mode: str
) -> None:
    torch.manual_seed(0)
    model = TinyUNet()
    edited = fxtap.edit(model, {"cat": make()})
    hand = HandEdited("cat", make(), PATCH_CAT)
    hand.load_state_dict(model.state_dict())
    training = mode == "train"
    kwargs = {"patch": PATCH_CAT} if label == "Input" else {}
    assert bitwise_equal(_run(edited, model, training, **kwargs), _run(hand, hand, training))


def test_edit_of_the_model_output_node() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"add": Scale(-1.0)})
    hand = HandEdited("add", Scale(-1.0))
    hand.load_state_dict(model.state_dict())
    assert bitwise_equal(_run(edited, model, False), _run(hand, hand, False))


def test_resnet_channel_ablation_equals_a_hook() -> None:
    model = torchvision.models.resnet18().eval()
    edited = fxtap.edit(model, {"layer2": Zero(5)})
    x = torch.rand(2, 3, 64, 64, generator=_seeded(6))
    for training in (False, True):
        edited.train(training)
        model.train(training)
        handle = model.layer2.register_forward_hook(lambda _m, _i, out: Zero(5)(out))
        try:
            with preserved(model), torch.no_grad():
                expected = model(x)
        finally:
            handle.remove()
        with preserved(model), torch.no_grad():
            assert bitwise_equal(edited(x), expected)


@pytest.mark.parametrize("label", ["Add", "Scale(0.5)", "Input"])
def test_gradients_through_the_edit_equal_the_hooked_model(label: str) -> None:
    torch.manual_seed(0)
    model = TinyUNet().train()
    make = _edits(8)[label]
    edited = fxtap.edit(model, {"enc2": make()})

    def grads(run: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        patch = PATCH_ENC2.clone().requires_grad_(True)
        with preserved(model):
            torch.manual_seed(0)
            run(patch).square().sum().backward()
            found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            found["patch"] = patch.grad
            for p in model.parameters():
                p.grad = None
        return found

    def through_graph(patch: torch.Tensor) -> torch.Tensor:
        return edited(X, patch=patch) if label == "Input" else edited(X)

    def through_hook(patch: torch.Tensor) -> torch.Tensor:
        change = make()
        handle = model.enc2.register_forward_hook(
            lambda _m, _i, out: change(out, patch) if label == "Input" else change(out)
        )
        try:
            return model(X)
        finally:
            handle.remove()

    got, expected = grads(through_graph), grads(through_hook)
    assert bitwise_equal(got, expected)
    if label == "Input":
        # the patch replaces enc2's value: enc2 gets no gradient (enc1 does, through its skip)
        assert got["patch"] is not None and bool(got["patch"].abs().sum() > 0)
        assert not any(name.startswith("enc2") for name in got) and "enc1.0.weight" in got
    else:
        assert len(got) == len(dict(model.named_parameters())) + 1


def test_input_left_out_keeps_the_value_and_is_never_written() -> None:
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"enc2.1": Input("patch")})
    with torch.no_grad():
        assert bitwise_equal(edited(X), model(X))
        patch = PATCH_ENC2.clone()
        edited(X, patch=patch)  # enc2.2 is an in-place ReLU after the patched node
    assert bitwise_equal(patch, PATCH_ENC2)


def test_input_of_the_wrong_shape_says_which() -> None:
    edited = fxtap.edit(TinyUNet(), {"enc2": Input("patch")})
    with pytest.raises(InvalidArgumentError, match=r"patch= is shape \(1, 8\).*\(2, 8, 8, 8\)"):
        edited(X, patch=torch.zeros(1, 8))


def test_a_plain_function_is_an_edit() -> None:
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"enc2": torch.neg})
    with torch.no_grad():
        assert bitwise_equal(edited(X), _hooked(model, "enc2", Scale(-1.0), False, None))


def test_two_edits_of_one_node_apply_in_order() -> None:
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"enc2": Scale(2.0), "enc2.2": Add(torch.ones(1))})
    expected = _hooked(model, "enc2", nn.Sequential(Scale(2.0), Add(torch.ones(1))), False, None)
    assert bitwise_equal(_run(edited, model, False), expected)
    assert {"enc2.2.edit", "enc2.2.edit_1"} <= set(edited.node_names("eval"))


def test_the_model_is_not_modified() -> None:
    model = TinyUNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [n for n, _ in model.named_modules()]
    edited = fxtap.edit(model, {"enc2": Scale(0.5)})
    edited.eval()
    assert model.training
    assert [n for n, _ in model.named_modules()] == modules
    assert all(not m._forward_hooks for m in model.modules())
    edited(X)
    assert bitwise_equal(model.state_dict(), before)
    assert sum(p.numel() for p in edited.parameters()) == sum(p.numel() for p in model.parameters())


# --- taps of an edited model ---------------------------------------------------------------------


def test_taps_of_the_edited_model() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    ex = fxtap.create_feature_extractor(
        model, {"enc2": "e", "dec1": "d", ":output": "out"}, edits={"enc2": Scale(3.0)}
    )
    values: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            out = out * 3.0 if name == "e" else out
            values[name] = out.clone()
            return out

        return hook

    handles = [
        model.enc2.register_forward_hook(keep("e")),
        model.dec1.register_forward_hook(keep("d")),
    ]
    try:
        with torch.no_grad():
            values["out"] = model(X)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        assert bitwise_equal(ex(X), values)
    assert ex.outputs["eval"]["e"] == "enc2.2.edit"


def test_taps_before_the_edit_prune_it_away() -> None:
    ex = fxtap.create_feature_extractor(TinyUNet(), ["enc1"], edits={"dec1": Scale(3.0)})
    assert not any(n.endswith(".edit") for n in ex.node_names("eval"))


# --- torch.export ------------------------------------------------------------------------------


def test_torch_export_of_an_edited_model() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"enc2": Input("patch"), "cat_1": Project(torch.randn(8), dim=1)})
    program = torch.export.export(edited, (X,), {"patch": PATCH_ENC2})
    with torch.no_grad():
        assert bitwise_equal(program.module()(X, patch=PATCH_ENC2), edited(X, patch=PATCH_ENC2))


# --- errors ------------------------------------------------------------------------------------


def test_bad_edits_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"edits\['enc2'\] is a float, not an edit"):
        fxtap.edit(TinyUNet(), {"enc2": 0.5})
    with pytest.raises(InvalidArgumentError, match="not a non-empty dict"):
        fxtap.edit(TinyUNet(), {})
    with pytest.raises(InvalidArgumentError, match=r"both Input\('p'\)"):
        fxtap.edit(TinyUNet(), {"enc1": Input("p"), "enc2": Input("p")})
    with pytest.raises(NodeNotFoundError, match="closest: 'enc2"):
        fxtap.edit(TinyUNet(), {"enc3": Scale(2.0)})
    for name, why in (("x", "already an argument"), ("self", "reserves"), ("torch", "reserves")):
        with pytest.raises(InvalidArgumentError, match=f"Input\\('{name}'\\), but .*{why}"):
            fxtap.edit(TinyUNet(), {"enc2": Input(name)})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Input("not a name"), "ASCII Python identifier"),
        (lambda: Input("class"), "ASCII Python identifier"),
        (lambda: Zero("3"), r"Zero\(index='3'\)"),
        (lambda: Scale("2"), r"Scale\(factor='2'\) is a str"),
        (lambda: Add([1.0]), r"Add\(tensor=\[1.0\]\) is a list"),
        (lambda: Project(torch.zeros(3)), "non-zero 1-d tensor"),
    ],
)
def test_bad_edit_modules_are_refused(make: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        make()


# --- saving ------------------------------------------------------------------------------------


def test_edited_model_saves_and_loads_in_the_safe_format(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = TinyUNet()
    edits: dict[str, Any] = {label: make() for label, make in zip(
        ["enc1", "enc1.0", "enc1.1", "enc2", "enc2.0", "enc2.1", "mid", "up2", "cat"],
        [lambda: Zero(), lambda: Zero(1), lambda: Zero([0, 3], dim=1), lambda: Scale(0.5),
         lambda: Scale(torch.rand(1, 8, 1, 1)), lambda: Add(torch.randn(8, 1, 1)),
         lambda: Project(torch.randn(16), dim=1), lambda: Replace(torch.randn(8, 8, 8)),
         lambda: Input("patch")],
        strict=True,
    )}  # fmt: skip
    edited = fxtap.edit(model, edits)
    loaded = fxtap.load(fxtap.save(edited, tmp_path / "edited.fxtap"))
    for training in (False, True):
        for kwargs in ({}, {"patch": PATCH_CAT}):
            expected = _run(edited, model, training, **kwargs)
            assert bitwise_equal(_run(loaded, model, training, **kwargs), expected)


def test_a_function_edit_saves_only_as_a_pickle(tmp_path: Any) -> None:
    edited = fxtap.edit(TinyUNet(), {"enc2": torch.neg})
    with pytest.raises(InvalidArgumentError, match=r"'enc2.2' is the function 'neg'.*fmt='pickle'"):
        fxtap.save(edited, tmp_path / "neg.fxtap")
    path = fxtap.save(edited, tmp_path / "neg.fxtap", fmt="pickle")
    loaded = fxtap.load(path, trust=True)
    assert bitwise_equal(_run(loaded, loaded, False), _run(edited, edited, False))


def test_render_marks_the_edited_nodes(tmp_path: Any) -> None:
    edited = fxtap.edit(TinyUNet(), {"enc2": Scale(2.0), "cat": Zero(1)})
    loaded = fxtap.load(fxtap.save(edited, tmp_path / "edited.fxtap"))
    for module, name in ((edited, "built"), (loaded, "loaded")):  # the file keeps the marks
        rendering = fxtap.render(
            module, mode="eval", fmt="dot", out_dir=tmp_path, name=name, max_nodes=None
        )
        text = rendering.paths[0].read_text(encoding="utf-8")
        assert text.count("✎ edited") == 2
        assert '"enc2.2.edit"' in text


# --- threads -----------------------------------------------------------------------------------


def test_edited_module_called_from_many_threads_equals_serial_calls() -> None:
    """Eight threads call one edited module (a compiled ``Scale`` and an ``Input`` patched or
    left out, an in-place ReLU after it): every result equals the serial one bitwise."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    model = TinyUNet().eval()
    edited = fxtap.edit(model, {"enc1": Scale(0.5), "enc2.1": Input("patch")})
    inputs = [torch.rand(2, 3, 16, 16, generator=_seeded(10 + i)) for i in range(4)]
    patches = [None, PATCH_ENC2, -PATCH_ENC2]
    calls = [(x, p) for x in inputs for p in patches]
    with torch.no_grad():
        serial = [edited(x, patch=p) for x, p in calls]
    assert not bitwise_equal(serial[0], serial[1])
    barrier = threading.Barrier(8)

    def work(worker: int) -> list[tuple[int, int]]:
        wrong = []
        barrier.wait()
        with torch.no_grad():
            for call in range(24):
                i = (worker * 5 + call) % len(calls)
                if not bitwise_equal(edited(calls[i][0], patch=calls[i][1]), serial[i]):
                    wrong.append((worker, call))
        return wrong

    with ThreadPoolExecutor(8) as pool:
        wrong = [w for found in pool.map(work, range(8)) for w in found]
    assert wrong == []
    assert bitwise_equal(PATCH_ENC2, torch.randn(2, 8, 8, 8, generator=_seeded(1)))


# --- the export path (Hugging Face models) -------------------------------------------------------


@pytest.mark.hf
@pytest.mark.parametrize(
    ("name", "path"), [("llama", "layers.1"), ("bert", "encoder.layer.1.attention.self.query")]
)
def test_hugging_face_edit_equals_a_forward_hook(name: str, path: str) -> None:
    from support.hf import build_hf

    model, inputs = build_hf(name)
    steer = torch.randn(32, generator=_seeded(7))
    edited = fxtap.edit(model, {path: Add(steer)}, example_inputs=inputs)

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        # a decoder layer may return a tuple whose first item is the residual stream
        return (out[0] + steer, *out[1:]) if isinstance(out, tuple) else out + steer

    for training in (False, True):
        model.train(training)
        edited.train(training)
        handle = model.get_submodule(path).register_forward_hook(hook)
        try:
            with preserved(model), torch.no_grad():
                torch.manual_seed(0)
                expected = model(**inputs)
        finally:
            handle.remove()
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            got = edited(**inputs)
        assert bitwise_equal(got.last_hidden_state, expected.last_hidden_state)


# --- the capture path --------------------------------------------------------------------------


def _capture_inputs() -> list[torch.Tensor]:
    return [torch.rand(3, 8, 8, generator=_seeded(8)), torch.rand(3, 8, 8, generator=_seeded(9))]


def test_capture_path_edits_module_outputs_with_hooks(tmp_path: Any) -> None:
    model = ListRoot().eval()
    images = _capture_inputs()
    with pytest.warns(UserWarning, match="capturing"):
        ex = fxtap.create_feature_extractor(
            model, {"body": "body", ":output": "out"}, edits={"body": Scale(2.0)}
        )
    assert isinstance(ex, fxtap.CaptureExtractor) and ex.edited == ("body",)
    handle = model.body.register_forward_hook(lambda _m, _i, out: Scale(2.0)(out))
    try:
        with torch.no_grad():
            expected_out = model(images)
            expected_body = model.body(images[0][None])
    finally:
        handle.remove()
    with torch.no_grad():
        got = ex(images)
    assert bitwise_equal(got["out"], expected_out)
    assert bitwise_equal(got["body"], expected_body)  # the first call's value, edited
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(InvalidArgumentError, match=r"forward hooks.*fmt='pickle'"):
        fxtap.save(ex, tmp_path / "edited.fxtap")


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ({"body": Input("patch")}, "Input edit.*Replace"),
        ({"bod": Scale(2.0)}, "names no module.*'body'"),
    ],
)
def test_capture_path_refuses_what_hooks_cannot_do(edits: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        fxtap.create_feature_extractor(ListRoot(), [":output"], edits=edits)


def test_edit_of_a_model_only_the_capture_path_runs_points_to_the_hooks() -> None:
    with pytest.raises(fxtap.TraceError) as info:
        fxtap.edit(ListRoot(), {"body": Scale(2.0)})
    assert "create_feature_extractor(model, return_nodes, edits=...)" in "".join(
        info.value.__notes__
    )


def test_edit_of_a_model_input() -> None:
    model = TinyUNet().eval()
    with torch.no_grad():
        scaled = fxtap.edit(model, {"x": Scale(2.0)})
        assert bitwise_equal(scaled(X), model(X * 2.0))
        given = fxtap.edit(model, {"x": Input("other")})
        assert bitwise_equal(given(X, other=X * 2.0), model(X * 2.0))
        assert bitwise_equal(given(X), model(X))


# --- the export path: a tiny llama, edited in the middle, patched between two prompts -----------

#: a Scale and an Add at module outputs inside the second decoder layer, and the residual stream
#: after the first layer as an input: with the patch, all three change the output
LLAMA_EDITS = {
    "layers.0": "patch",
    "layers.1.self_attn.o_proj": "add",
    "layers.1.mlp.act_fn": "scale",
}
#: sequence lengths the edited llama, built at 8 tokens, is called at (batch and sequence are
#: dynamic on the export path)
LLAMA_LENGTHS = (8, 7, 20)


@pytest.fixture(scope="module")
def llama_edited() -> tuple[nn.Module, nn.Module, dict[str, nn.Module]]:
    from support.hf import build_hf

    model, inputs = build_hf("llama")
    changes: dict[str, nn.Module] = {
        "patch": Input("patch"),
        "add": Add(torch.randn(32, generator=_seeded(11))),
        "scale": Scale(torch.rand(37, generator=_seeded(12))),
    }
    edits = {path: changes[kind] for path, kind in LLAMA_EDITS.items()}
    return model, fxtap.edit(model, edits, example_inputs=inputs), changes


def _prompt(seq: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (2, seq), generator=_seeded(seed))
    return {"input_ids": ids, "attention_mask": torch.ones(2, seq, dtype=torch.long)}


def _llama_hooked(
    model: nn.Module, changes: dict[str, nn.Module], inputs: dict[str, Any], patch: Any
) -> torch.Tensor:
    """The reference: the unmodified llama with forward hooks making the same changes."""

    def hook(kind: str) -> Callable[..., Any]:
        def change(_m: nn.Module, _i: Any, out: Any) -> Any:
            value = out[0] if isinstance(out, tuple) else out
            value = patch if kind == "patch" else changes[kind](value)
            return (value, *out[1:]) if isinstance(out, tuple) else value

        return change

    handles = [
        model.get_submodule(path).register_forward_hook(hook(kind))
        for path, kind in LLAMA_EDITS.items()
        if kind != "patch" or patch is not None
    ]
    try:
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            return model(**inputs).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()


def _stream(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The residual stream after the first decoder layer, by a forward hook."""
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, out: Any) -> None:
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = model.get_submodule("layers.0").register_forward_hook(keep)
    try:
        with preserved(model), torch.no_grad():
            torch.manual_seed(0)
            model(**inputs)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.hf
def test_llama_steered_and_patched_between_two_prompts_equals_hooks(llama_edited: Any) -> None:
    model, edited, changes = llama_edited
    for training in (False, True):
        model.train(training)
        edited.train(training)
        for seq in LLAMA_LENGTHS:
            clean, corrupt = _prompt(seq, 1), _prompt(seq, 2)
            clean_stream = _stream(model, clean)
            outputs = []
            for patch in (None, clean_stream):
                expected = _llama_hooked(model, changes, corrupt, patch)
                kwargs = {} if patch is None else {"patch": patch}
                with preserved(model), torch.no_grad():
                    torch.manual_seed(0)
                    got = edited(**corrupt, **kwargs).last_hidden_state
                label = (
                    f"{'train' if training else 'eval'}, {seq} tokens, patch={patch is not None}"
                )
                assert got.shape == (2, seq, 32), label
                assert bitwise_equal(got, expected), label
                outputs.append(got)
            assert not torch.equal(*outputs), "the patch changed nothing"
    model.eval()


@pytest.mark.hf
def test_torch_export_of_an_edited_llama(llama_edited: Any) -> None:
    """The edited llama exports with its patch input, statically and with batch and sequence
    dynamic; the exported programs give the edited module's values."""
    from torch.export import Dim

    model, edited, _ = llama_edited
    model.eval()
    edited.eval()
    corrupt = _prompt(8, 2)
    patch = _stream(model, _prompt(8, 1))
    static = torch.export.export(edited, (), {**corrupt, "patch": patch}).module()
    with torch.no_grad():
        got = static(**corrupt, patch=patch).last_hidden_state
        assert bitwise_equal(got, edited(**corrupt, patch=patch).last_hidden_state)
    dims = {0: Dim.AUTO, 1: Dim.AUTO}
    shapes = {"input_ids": dims, "attention_mask": dims, "patch": dims}
    program = torch.export.export(edited, (), {**corrupt, "patch": patch}, dynamic_shapes=shapes)
    for seq in LLAMA_LENGTHS:
        corrupt = _prompt(seq, 2)
        patch = _stream(model, _prompt(seq, 1))
        with torch.no_grad():
            got = program.module()(**corrupt, patch=patch).last_hidden_state
            assert bitwise_equal(got, edited(**corrupt, patch=patch).last_hidden_state), seq
