"""``python -m therasim``: the command line (:func:`therasim.cli.main`)."""

from therasim.cli import main

raise SystemExit(main())
