"""`python -m prlbench` is the `prlbench` command."""

from prlbench.cli import app

app(prog_name="prlbench")
