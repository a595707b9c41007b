"""``python -m lmforge``: the same as the ``lmforge`` command."""

from lmforge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
