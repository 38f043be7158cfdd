"""Models, builders and checks shared by several test files; no test module imports another.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so a test imports these as
``from support.checker import bitwise_equal``.
"""
