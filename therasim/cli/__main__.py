"""``python -m therasim.cli``: the same command line as ``therasim``."""

from therasim.cli import main

raise SystemExit(main())
