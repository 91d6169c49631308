from therasim.cli import main

raise SystemExit(main())
