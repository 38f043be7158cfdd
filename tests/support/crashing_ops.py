"""The ops known to crash the process on hostile arguments; no torch import, so the op fuzzer's
child process can read it before it caps its memory."""

#: Ops found to crash the process on hostile arguments (they trust their indices); never allowed.
CRASHING = frozenset(
    {
        "aten::max_pool2d_with_indices_backward.default",
        "aten::embedding_dense_backward.default",
    }
)
