"""`python -m benchmark.report ...`"""

from benchmark.report.cli import main

raise SystemExit(main())
