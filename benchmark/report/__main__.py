"""`python -m benchmark.report ...`"""

import os
import sys

from benchmark.report.cli import main

try:
    code = main()
except BrokenPipeError:  # `python -m benchmark.report --help | head`: the reader has what it wanted
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
raise SystemExit(code)
