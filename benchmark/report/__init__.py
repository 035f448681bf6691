"""Report: seed-aggregated learning curves and a summary table from W&B runs, cloud or offline; and
`compare`, a statistical verdict between two selections of runs.

Modules, in the order a report uses them:
  runs       the `Run` record every source produces, what they gathered, filters, grouping
  offline    wandb's `.wandb` files (history_decode: their history, column-wise)
  cloud      `wandb.Api` with full histories and an on-disk cache
  tensorboard  folders of TensorBoard event files; variant and seed from the folder's name
  rundir     a harness run dir: expected variants and seeds, each job's state and W&B run
  presets    the four comparisons
  openrlbenchmark  openrlbenchmark's `--filters` syntax (TRL's plot.sh): groups, selections, which runs
  aggregate  seeds -> curves and final numbers
  figures    PNG + SVG per comparison
  summary    the table: md, csv, html, terminal
  page       the interactive page: plotly.js beside it, the data embedded, works offline
  cli        `benchmark report` / `python -m benchmark.report`, and the sources both commands read
And `benchmark compare`:
  verdict    two sides' final scores -> better / worse / equivalent / inconclusive, seeds needed
  compare    the command: select both sides, judge each metric, write compare.md / .json / figure
"""

from benchmark.report.cli import main

__all__ = ["main"]
