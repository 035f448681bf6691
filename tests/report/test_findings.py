"""The page says what it found: verdicts against the baseline computed by `report` itself, per-metric epsilons,
one interval for one difference (the same as `benchmark compare`), provenance, generations, unknown metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmark.report.compare import main as compare_main
from benchmark.report.results import Results

BASE, CAND = "sentiment_tuning", "sentiment_tuning_step_grad_accu"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.report", *args], capture_output=True, text=True,
                          timeout=300)


def test_the_page_leads_with_each_variants_verdict_and_compare_gives_the_same_interval(sweep, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(out), "--baseline", BASE,
                  "--epsilon", "objective/kl=1000", "--title", "Accumulation", "--metrics", "env/reward_mean",
                  "objective/kl")
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.md").read_text()
    # Written by report alone, whatever ran before: no compare.json in the folder.
    assert not (out / "compare.json").exists()
    assert summary.startswith("## Accumulation\n")
    line = next(x for x in summary.splitlines() if x.startswith(f"- `{CAND}` against `{BASE}`: **env/reward_mean**"))
    assert "**better**" in line
    # The compare figure is on the page (and beside it), and the variants' verdicts head the page.
    figure = out / f"compare-{CAND}.png"
    assert figure.stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert f"compare-{CAND}.png" in page and "<strong>better</strong>" in page
    # One interval for one difference: `benchmark compare` prints the very same numbers.
    assert compare_main(["--wandb-dir", str(sweep.wandb_dir), "--baseline", BASE, "--candidate", CAND,
                         "--metric", "env/reward_mean", "--output-dir", str(tmp_path / "compare")]) == 0
    (judged,) = json.loads((tmp_path / "compare" / "compare.json").read_text())["metrics"]
    low, high = judged["ci"]
    assert f"Δ = {judged['delta']:+.3g} [{low:+.3g}, {high:+.3g}]" in line
    # The KL's epsilon is the one given for it: within ±1000 the sides are the same.
    kl_line = next(x for x in summary.splitlines() if f"`{CAND}` against `{BASE}`: **objective/kl**" in x)
    assert "**unchanged**" in kl_line


def test_provenance_and_generations_come_from_the_runs(sweep, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    page = (out / "index.html").read_text()
    # The config keys that differ between variants, and the machine and Python W&B recorded.
    assert "differs: trl_ppo_trainer_config.gradient_accumulation_steps" in page
    assert "CPython" in page and "seeds: sentiment_tuning" in page
    runs = Results.read(out / "results.parquet").runs
    assert set(runs["variant"]) == set(sweep.variants)
    assert all(meta.get("python", "").startswith("CPython") for meta in runs["meta"])


def test_an_unknown_metric_is_refused_with_the_closest_names(sweep, tmp_path: Path) -> None:
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--metrics", "env/reward_men")
    assert done.returncode == 2
    assert "no run logged the metric env/reward_men; did you mean env/reward_mean" in done.stderr
    assert not (tmp_path / "index.html").exists()
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--baseline", "nope")
    assert done.returncode == 2 and "--baseline nope is not among the variants" in done.stderr


def test_variants_by_tag_as_in_compare(sweep, tmp_path: Path) -> None:
    """main against pr-N in `report`: each run in the group of the first listed tag it carries."""
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--group-by",
                  "tag:report-test,other")
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "| report-test |" in summary and "| sentiment_tuning |" not in summary


def test_each_source_can_carry_its_own_label(sweep, tmp_path: Path) -> None:
    """Two sources in one report, each labelled: a W&B folder as LABEL=DIR, an earlier results.parquet as
    LABEL=PATH; the same variant from each stays apart."""
    first = tmp_path / "first"
    assert report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(first)).returncode == 0
    done = report("--wandb-dir", f"now={sweep.wandb_dir}", "--from", f"then={first / 'results.parquet'}",
                  "--output-dir", str(tmp_path / "both"), "--baseline", f"{BASE} (then)")
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "both" / "summary.md").read_text()
    assert f"| {BASE} (now) |" in summary and f"| {BASE} (then) |" in summary
    # The same runs read twice: the same numbers, so `now` is judged no different from `then` on the reward.
    line = next(x for x in summary.splitlines() if x.startswith(f"- `{BASE} (now)` against `{BASE} (then)`"))
    assert "Δ = +0 " in line or "Δ = -0 " in line or "Δ = 0 " in line
    assert "tags" in (tmp_path / "both" / "index.html").read_text()


def test_help_piped_to_head_ends_quietly() -> None:
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m benchmark.report --help | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("usage: benchmark report") and "Traceback" not in done.stderr, done.stderr
