"""``python -m fxtap``: the same command line as the ``fxtap`` script."""

from fxtap.cli import main

raise SystemExit(main())
