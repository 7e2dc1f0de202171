"""`python -m clipsonic` runs the command-line interface."""

from clipsonic.cli import run

run()
