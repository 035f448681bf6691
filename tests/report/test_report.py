"""`python -m benchmark.report` end to end on the sweep: table numbers by hand, figures, bad input."""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import itertools
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import stats

from benchmark.report import main, offline
from benchmark.report.presets import preset_selection

if TYPE_CHECKING:
    from tests.report.conftest import Sweep

LAST_N = 10


@dataclass
class Report:
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def report(sweep: Sweep, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The default report of the whole sweep, with what it printed."""
    out = tmp_path_factory.mktemp("report")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(out), "--last-n", str(LAST_N)]) == 0
    return Report(out, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def report_dir(report: Report) -> Path:
    return report.out


def table(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def by_hand(sweep: Sweep, variant: str, metric: str, seeds: tuple[int, ...]) -> tuple[float, float]:
    """Mean over seeds of each run's last-N average, and the Student-t 95% half-width."""
    finals = [statistics.fmean(row[metric] for row in sweep.runs[variant, s].rows[-LAST_N:]) for s in seeds]
    t975 = float(stats.t.ppf(0.975, len(finals) - 1))
    return statistics.fmean(finals), t975 * statistics.stdev(finals) / len(finals) ** 0.5


def test_summary_numbers_equal_hand_computed_ones(sweep: Sweep, report_dir: Path) -> None:
    rows = table(report_dir)
    assert set(rows) == set(sweep.variants)
    for variant in sweep.variants:
        row = rows[variant]
        mean, ci = by_hand(sweep, variant, "env/reward_mean", sweep.seeds)
        assert float(row["reward_mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(row["reward_ci95"]) == pytest.approx(ci, rel=1e-12)
        kl_seeds = tuple(s for s in sweep.seeds if (variant, s) != sweep.no_kl)
        if len(kl_seeds) > 1:
            assert float(row["kl_mean"]) == pytest.approx(by_hand(sweep, variant, "objective/kl", kl_seeds)[0])
        else:  # one seed: a value without an interval
            assert row["kl_ci95"] == "" and row["kl_n"] == "1"
    # Samples/s without a logged throughput: steps x batch size / runtime, per run, averaged over seeds.
    runtimes = [offline.read_run(sweep.runs["sentiment_tuning", s].file)[0].runtime for s in sweep.seeds]
    expected = statistics.fmean(40 * 16 / r for r in runtimes)
    assert float(rows["sentiment_tuning"]["samples_per_s"]) == pytest.approx(expected)
    # Where the runs logged their throughput, its mean per run, averaged over seeds.
    logged = statistics.fmean(
        statistics.fmean(r["perf/samples_per_s"] for r in sweep.runs["sentiment_tuning_peft", s].rows)
        for s in sweep.seeds
    )
    assert float(rows["sentiment_tuning_peft"]["samples_per_s"]) == pytest.approx(logged)


def test_crashed_runs_are_excluded_and_the_table_says_so(sweep: Sweep, report_dir: Path) -> None:
    rows = table(report_dir)
    for variant in (sweep.failed[0], sweep.truncated[0]):
        row = rows[variant]
        assert (row["seeds_done"], row["seeds_expected"], row["seeds_crashed"]) == ("2", "3", "1")
        assert row["reward_n"] == "2" and row["crashed_included"] == "False"
    markdown = (report_dir / "summary.md").read_text()
    assert markdown.count("1 crashed/failed excluded") == 2
    assert "2 / 3" in markdown


def test_include_crashed_averages_them_in(sweep: Sweep, tmp_path: Path) -> None:
    assert main(["--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--include-crashed"]) == 0
    row = table(tmp_path)["sentiment_tuning"]
    mean, ci = by_hand(sweep, "sentiment_tuning", "env/reward_mean", (*sweep.seeds, sweep.failed[1]))
    assert row["reward_n"] == "3" and row["crashed_included"] == "True"
    assert float(row["reward_mean"]) == pytest.approx(mean) and float(row["reward_ci95"]) == pytest.approx(ci)
    assert "1 crashed/failed included" in (tmp_path / "summary.md").read_text()


def test_table_columns_follow_metrics(sweep: Sweep, tmp_path: Path) -> None:
    metrics = ["env/reward_std", "ppo/loss/total"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        args = ["--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--last-n", str(LAST_N)]
        assert main([*args, "--metrics", *metrics]) == 0
    header = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| variant"))
    assert header == ("| variant | seeds done/expected | final env/reward_std | final ppo/loss/total | runtime | "
                      "samples/s | GPU-hours | notes |")  # fmt: skip
    assert "final env/reward_std" in (tmp_path / "index.html").read_text()
    assert "final ppo/loss/total" in stdout.getvalue()
    rows = table(tmp_path)
    assert "reward_mean" not in rows["sentiment_tuning"] and "kl_mean" not in rows["sentiment_tuning"]
    for variant in sweep.variants:
        for metric in metrics:
            mean, ci = by_hand(sweep, variant, metric, sweep.seeds)
            assert float(rows[variant][f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(rows[variant][f"{metric}_ci95"]) == pytest.approx(ci, rel=1e-12)
            assert rows[variant][f"{metric}_n"] == "2"


def assert_real_image(path: Path) -> np.ndarray:
    """A figure of sane size that is not one flat colour."""
    assert path.stat().st_size > 5_000
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 6000
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 20
    return pixels


def test_figures_exist_with_content(report_dir: Path) -> None:
    assert_real_image(report_dir / "curves.png")
    svg = (report_dir / "curves.svg").read_text()
    assert svg.startswith("<?xml") and "<path" in svg
    # The page: plotly.js beside it, every variant named.
    html = (report_dir / "index.html").read_text()
    assert '<script src="plotly.min.js">' in html and "sentiment_tuning_peft" in html
    assert (report_dir / "plotly.min.js").stat().st_size > 1_000_000


def test_presets_make_the_four_comparisons(sweep: Sweep, tmp_path: Path) -> None:
    presets = ["baseline", "grad-accum", "model-size", "peft"]
    assert main(["--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--preset", *presets]) == 0
    for preset in presets:
        assert_real_image(tmp_path / f"{preset}.png")
        assert (tmp_path / f"{preset}.svg").is_file()
    runs = [offline.read_run(logged.file)[0] for logged in sweep.runs.values()]
    expected = {
        "baseline": {"lvwerra/gpt2-imdb"},
        "grad-accum": {"grad accum 1", "grad accum 128"},
        "model-size": {"lvwerra/gpt2-imdb", "gpt2-xl, grad accum 8"},
        "peft": {"full fine-tuning", "LoRA (PEFT)"},
    }
    for preset, labels in expected.items():
        chosen, label = preset_selection(preset, runs)
        assert {label(run) for run in chosen} == labels, preset


def test_labels_filters_and_wall_time(sweep: Sweep, tmp_path: Path) -> None:
    args = ["--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path), "--x-axis", "_runtime"]
    args += ["--filter", "trl_ppo_trainer_config.model_name=lvwerra/gpt2-imdb", "--tags", "report-test"]
    args += ["--labels", "sentiment_tuning=baseline", "--band", "ci95", "--smooth", "5"]
    assert main(args) == 0
    assert set(table(tmp_path)) == {"baseline", "sentiment_tuning_step_grad_accu", "sentiment_tuning_peft"}
    assert_real_image(tmp_path / "curves.png")


def curve_rows(csv_path: Path, metric: str, variant: str) -> list[dict[str, float]]:
    with open(csv_path) as f:
        return [{k: float(v) if v else float("nan") for k, v in row.items() if k not in ("metric", "variant")}
                for row in csv.DictReader(f) if row["metric"] == metric and row["variant"] == variant]


def test_curve_numbers_follow_x_axis_smoothing_and_band(sweep: Sweep, tmp_path: Path) -> None:
    variant, metric = "sentiment_tuning_peft", "env/reward_mean"
    args = ["--wandb-dir", str(sweep.wandb_dir), "--metrics", metric]
    assert main([*args, "--output-dir", str(tmp_path / "a"), "--smooth", "5"]) == 0
    # By hand: per seed a rolling mean over 5 logged steps (fewer at the start), then mean and std over seeds.
    smoothed = []
    for seed in sweep.seeds:
        values = [row[metric] for row in sweep.runs[variant, seed].rows]
        smoothed.append([statistics.fmean(values[max(0, i - 4) : i + 1]) for i in range(len(values))])
    rows = curve_rows(tmp_path / "a" / "curves.csv", metric, variant)
    assert [row["_step"] for row in rows] == list(range(len(smoothed[0])))
    for row, *at_step in zip(rows, *smoothed, strict=True):
        assert row["mean"] == pytest.approx(statistics.fmean(at_step))
        assert row["high"] - row["mean"] == pytest.approx(statistics.stdev(at_step))
        assert row["mean"] - row["low"] == pytest.approx(statistics.stdev(at_step))
        assert row["seeds"] == len(sweep.seeds)

    # Wall time on x: every time either seed logged. A seed counts where it logged, or between two of
    # its points at most 1.5 logging intervals apart (interpolated); not across a longer gap.
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--x-axis", "_runtime", "--band", "ci95"]) == 0
    histories = [offline.read_run(sweep.runs[variant, seed].file)[0].history for seed in sweep.seeds]
    seeds = [(h["_runtime"].to_list(), h[metric].to_list()) for h in histories]
    longest_gap = [1.5 * statistics.median(b - a for a, b in itertools.pairwise(times)) for times, _ in seeds]
    rows = curve_rows(tmp_path / "b" / "curves.csv", metric, variant)
    assert [row["_runtime"] for row in rows] == sorted({t for times, _ in seeds for t in times})
    for row in rows:
        at = []
        for (times, values), gap in zip(seeds, longest_gap, strict=True):
            after = bisect.bisect_left(times, row["_runtime"])
            if row["_runtime"] in times:
                at.append(values[after])
            elif 0 < after < len(times) and times[after] - times[after - 1] <= gap:
                at.append(float(np.interp(row["_runtime"], times, values)))
        assert row["seeds"] == len(at) and row["mean"] == pytest.approx(statistics.fmean(at))
        if len(at) == 2:
            # Bootstrap means of two seeds are a, (a + b) / 2 or b, with chances 1/4, 1/2, 1/4: the 95%
            # interval is [a, b], narrower than the std band (mean +- |a - b| / sqrt 2).
            assert (row["low"], row["high"]) == pytest.approx((min(at), max(at)))


def test_terminal_table_and_warnings(report: Report, sweep: Sweep) -> None:
    assert "Benchmark summary" in report.stdout and "sentiment_tuning_peft" in report.stdout
    assert "1 crashed/failed" in report.stdout  # the notes column may wrap
    # A metric missing from a run: the run is named, the rest is plotted.
    assert "objective/kl (x: _step) missing from runs sentiment_tuning_gpt2xl_grad_accu-s2" in report.stderr
    # The damaged file, with its offset; the same warnings are on the page.
    truncated = str(sweep.runs[sweep.truncated].file)
    assert truncated in report.stderr and "at byte" in report.stderr
    assert truncated in (report.out / "index.html").read_text()


def test_no_match_names_the_filters_and_what_is_there(sweep: Sweep, tmp_path: Path) -> None:
    """Through `python -m benchmark.report`, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmark.report", "--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path),
         "--filter", "exp_name=nope"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "exp_name=nope" in result.stderr and "10 runs" in result.stderr
    assert "sentiment_tuning_peft (2)" in result.stderr


def test_index_html_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: scripts/test.sh installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    # --no-sandbox: tests may run as root, where chromium's sandbox refuses to start.
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1280,1600",
         (report_dir / "index.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = assert_real_image(shot)
    # The page is mostly white; the figure and table must have put ink on it.
    ink = (pixels[..., :3] < 0.9).any(axis=-1).mean()
    assert ink > 0.02
