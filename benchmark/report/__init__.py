"""Report: seed-aggregated learning curves and a summary table from W&B runs, cloud or offline.

Modules, in the order a report uses them: `offline` / `cloud` / `sources` (runs in), `select` and
`presets` (which runs, which variant), `aggregate` (seeds -> curves and final numbers), `figures`,
`summary` (md, csv, html, terminal); `cli` ties them together.
"""

from benchmark.report.cli import main

__all__ = ["main"]
