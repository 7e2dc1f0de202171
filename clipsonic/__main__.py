"""`python -m clipsonic` runs the command-line interface."""

from clipsonic.cli import main

raise SystemExit(main())
