"""Entry point for ``python -m sidecar``: see ``sidecar.cli``."""

from sidecar.cli import main

# Guarded: the scanner's worker process (multiprocessing "spawn") imports this
# module again under another name, and must not start a second sidecar.
if __name__ == "__main__":
    raise SystemExit(main())
