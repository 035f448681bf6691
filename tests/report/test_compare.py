"""`benchmark compare`: its statistics against scipy and against their promised error rates, and the
command on real offline runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy import stats

from benchmark.report.compare import main
from benchmark.report.verdict import compare, holm, seeds_needed

if TYPE_CHECKING:
    from tests.report.conftest import Sweep

TRIALS = 200
REWARD = "env/reward_mean"


def verdict(baseline: np.ndarray, candidate: np.ndarray, epsilon: float = 0.1, seed: int = 0) -> str:
    return compare({"m": baseline}, {"m": candidate}, {"m": "higher"}, epsilon, seed=seed)[0].verdict


def test_welch_and_mann_whitney_equal_scipys() -> None:
    baseline = np.array([1.2, 0.7, 1.9, 1.1, 0.4, 1.3])
    candidate = np.array([1.8, 1.1, 2.4, 1.1, 2.0])
    (result,) = compare({"m": baseline}, {"m": candidate}, {"m": "higher"}, epsilon=0.1)
    assert result.p_welch == pytest.approx(stats.ttest_ind(candidate, baseline, equal_var=False).pvalue, rel=1e-12)
    u = stats.mannwhitneyu(candidate, baseline).statistic  # the tie (1.1, 1.1) counts one half
    assert result.prob_improvement * len(candidate) * len(baseline) == pytest.approx(u)
    assert result.delta == pytest.approx(candidate.mean() - baseline.mean())
    assert result.iqm_baseline == pytest.approx(stats.trim_mean(baseline, 0.25))


def test_holm_adjusts_step_down() -> None:
    # Sorted 0.01, 0.02, 0.04 times 3, 2, 1, kept monotone: 0.03, 0.04, 0.04.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_false_alarms_stay_near_alpha_in_a_a_comparisons() -> None:
    rng = np.random.default_rng(2026)
    alarms = sum(verdict(rng.normal(0, 1, 5), rng.normal(0, 1, 5), seed=i) in ("better", "worse")
                 for i in range(TRIALS))
    print(f"A/A, 5 vs 5 seeds: better or worse in {alarms}/{TRIALS} = {alarms / TRIALS:.1%}")
    assert alarms / TRIALS <= 0.05 + 2 * (0.05 * 0.95 / TRIALS) ** 0.5  # alpha + two binomial standard errors


def test_a_shift_of_one_and_a_half_sigma_is_found_with_ten_seeds() -> None:
    rng = np.random.default_rng(7)
    found = sum(verdict(rng.normal(0, 1, 10), rng.normal(1.5, 1, 10), seed=i) == "better" for i in range(TRIALS))
    print(f"1.5 sigma, 10 vs 10 seeds: better in {found}/{TRIALS} = {found / TRIALS:.1%}")
    assert found / TRIALS >= 0.8
    rng = np.random.default_rng(8)
    assert verdict(rng.normal(3, 1, 10), rng.normal(0, 1, 10)) == "worse"


def test_large_identical_samples_are_equivalent_and_seed_advice_matches_the_textbook() -> None:
    rng = np.random.default_rng(3)
    assert verdict(rng.normal(0, 1, 500), rng.normal(0, 1, 500), epsilon=0.3) == "equivalent"
    # A difference of one standard deviation (Cohen's d = 1), two-sided alpha 0.05, power 0.8: 17 a side
    # by the t-test (Cohen 1988, table 2.4.1); the normal approximation says 2 (1.96 + 0.84)^2 = 15.7.
    unit = np.array([-1.0, 1.0]) / np.sqrt(2)  # variance 1
    assert seeds_needed(unit, unit, epsilon=1.0, alpha=0.05) == 17
    few = verdict(rng.normal(0, 1, 4), rng.normal(0.2, 1, 4))
    assert few == "inconclusive"


def test_compare_on_offline_runs_writes_its_verdict_and_gates(sweep: Sweep, tmp_path: Path) -> None:
    # The second variant logs a reward 0.5 above the first, with a spread of 0.1 over seeds.
    base, cand = "sentiment_tuning", "sentiment_tuning_step_grad_accu"
    common = ["--wandb-dir", str(sweep.wandb_dir), "--metric", f"{REWARD}", "objective/kl:two-sided"]
    out = tmp_path / "out"
    assert main([*common, "--baseline", base, "--candidate", cand, "--output-dir", str(out),
                 "--fail-on", "worse"]) == 0
    data = json.loads((out / "compare.json").read_text())
    reward, kl = data["metrics"]
    assert reward["metric"] == REWARD and reward["verdict"] == "better" and reward["ci"][0] > 0
    assert reward["n_baseline"] == reward["n_candidate"] == 2  # the failed and the truncated run left out
    assert kl["direction"] == "two-sided" and kl["verdict"] in ("unchanged", "inconclusive", "changed")
    assert set(reward) >= {"delta", "p_welch", "prob_improvement", "prob_improvement_ci", "seeds_needed"}
    text = (out / "compare.md").read_text()
    # GitHub shows no file beside a comment: without --asset-url the figure is named, not embedded.
    assert f"**{REWARD}** (higher): **better**" in text and "](compare.png)" not in text
    assert "`compare.png` beside this file" in text
    assert (out / "compare.png").exists() and (out / "compare.svg").exists()
    # Per-metric epsilons reach the verdicts and the file.
    assert reward["epsilon"] == 0.1 and kl["epsilon"] == 0.5
    assert main([*common, "--baseline", base, "--candidate", cand, "--output-dir", str(tmp_path / "pr"),
                 "--asset-url", "https://example.org/ci/42/", "--epsilon", "objective/kl=2", "--epsilon", "0.3"]) == 0
    pr = json.loads((tmp_path / "pr" / "compare.json").read_text())["metrics"]
    assert [m["epsilon"] for m in pr] == [0.3, 2.0]
    assert "![compare.png](https://example.org/ci/42/compare.png)" in (tmp_path / "pr" / "compare.md").read_text()
    assert main([*common, "--baseline", base, "--candidate", cand, "--epsilon", "nope=1"]) == 2
    # The mirror image fails the gate; a config filter selects the same runs as the variant name.
    assert main([*common, "--baseline", cand, "--candidate", f"exp_name={base}", "--output-dir",
                 str(tmp_path / "rev"), "--fail-on", "worse"]) == 1
    assert json.loads((tmp_path / "rev" / "compare.json").read_text())["metrics"][0]["verdict"] == "worse"
    assert main([*common, "--baseline", base, "--candidate", "tag:no-such-tag", "--output-dir", str(tmp_path)]) == 2
