"""`python -m resforce.cli ...`: the `resforce` command (torchrun launches it this way)."""

from resforce.cli.main import main

main()
