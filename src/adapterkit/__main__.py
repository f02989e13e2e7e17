"""``python -m adapterkit ...``: the command line, also the entry point ``torchrun -m adapterkit`` runs."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
