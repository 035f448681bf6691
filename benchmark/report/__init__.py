"""Report: a page that says what a sweep found, from W&B runs (cloud or offline), TensorBoard event files or
earlier results; and `compare`, a statistical verdict between two selections of runs.

Modules, in the order a report uses them:
  runs         the `Run` record every source produces, what they gathered, filters, grouping
  offline      wandb's `.wandb` files (history_decode: their history, column-wise)
  cloud        `wandb.Api` with full histories and an on-disk cache
  tensorboard  folders of TensorBoard event files; variant and seed from the folder's name
  rundir       a harness run dir: expected variants and seeds, each job's state and W&B run
  sources      the sources both commands read (and --from: an earlier results.parquet)
  presets      the four comparisons
  openrlbenchmark  openrlbenchmark's `--filters` syntax (TRL's plot.sh): groups, selections, which runs
  results      the one tidy table (run, variant, seed, metric, step, value) + a run table: results.parquet
  aggregate    seeds -> curves and final numbers
  verdict      two sides' final scores -> better / worse / equivalent / inconclusive, seeds needed
  judge        every variant against the baseline (verdict's statistics), a lone variant's trend
  provenance   commands, config differences, commit, machine, versions, dates, seeds
  figures      PNG + SVG per comparison, and compare's figure
  summary      the table: md, csv, terminal
  page         the interactive page: plotly.js beside it, the data embedded, works offline
  cli          `benchmark report` / `python -m benchmark.report`
And `benchmark compare`:
  compare      the command: select both sides, judge each metric, write compare.md / .json / figure
"""

from benchmark.report.cli import main

__all__ = ["main"]
