"""Every use of a private torch name, each with a fallback built on public API only.

fxtap reads a few torch internals where torch offers no public way, or no fast one. They all
live in this package, so a torch release that renames one breaks it and nothing else, and
``tests/test_layout.py`` fails when a private torch name is used anywhere else in fxtap.

Each function takes the private path unless the fallbacks are forced: set the environment
variable ``FXTAP_COMPAT_PUBLIC_ONLY=1`` before importing fxtap, or wrap code in
``with public_only():``. ``tests/test_compat.py`` runs every fallback and checks that it gives
the same values, bitwise, as the private path. Where torch has no public equivalent the fallback
either degrades documented behaviour (said at the function) or raises ``CompatError``.

Not listed here, on purpose: ``nn.Module``'s registries (``_modules``, ``_parameters``,
``_buffers``, ``_non_persistent_buffers_set``). They are a module's state, read the same way by
torch.fx, torch.export and every serializer, and no public API shows a parameter registered as
``None`` (``Conv2d(bias=False)``), which a copy of a module must keep.
"""

from __future__ import annotations

from fxtap._compat._graph import (
    CallExplainer,
    ModeCode,
    copy_attr,
    dropout_classes,
    explain_calls,
    format_import_block,
    fx_reserved_globals,
    graph_codegen,
    is_assert,
    is_assert_is_none,
    is_erased,
    is_vmap_nesting,
    restore_mode_code,
    save_mode_code,
    target_to_str,
)
from fxtap._compat._switch import CompatError, public_only, use_private
from fxtap._compat._torch import (
    OpOverload,
    distribution_checks,
    fake_inputs,
    fake_tensor_mode,
    is_op_overload,
    is_op_packet,
    load_pre_hooks,
    op_parts,
    op_recorder,
    op_schema,
    pytree,
    register_load_pre_hook,
    reparametrize,
    restore_derived_state,
    symbolic_check,
    tree_leaves,
    tree_map,
    version_mark,
    weight_norm_class,
    wrap_load_pre_hook,
)

__all__ = [
    "CallExplainer",
    "CompatError",
    "ModeCode",
    "OpOverload",
    "copy_attr",
    "distribution_checks",
    "dropout_classes",
    "explain_calls",
    "fake_inputs",
    "fake_tensor_mode",
    "format_import_block",
    "fx_reserved_globals",
    "graph_codegen",
    "is_assert",
    "is_assert_is_none",
    "is_erased",
    "is_op_overload",
    "is_op_packet",
    "is_vmap_nesting",
    "load_pre_hooks",
    "op_parts",
    "op_recorder",
    "op_schema",
    "public_only",
    "pytree",
    "register_load_pre_hook",
    "reparametrize",
    "restore_derived_state",
    "restore_mode_code",
    "save_mode_code",
    "symbolic_check",
    "target_to_str",
    "tree_leaves",
    "tree_map",
    "use_private",
    "version_mark",
    "weight_norm_class",
    "wrap_load_pre_hook",
]
