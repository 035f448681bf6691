"""TRL-compatible entry point: `python benchmark/benchmark.py --command ... --num-seeds 5 --workers 2`."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, where this very file would shadow
    # the `benchmark` package it belongs to. Import the package from the folder above instead.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))

    from benchmark.cli import main

    sys.exit(main())
