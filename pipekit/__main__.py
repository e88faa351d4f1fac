"""``python -m pipekit``: the same as the ``pipekit`` command."""

from pipekit._cli import console_main

if __name__ == "__main__":
    console_main()
