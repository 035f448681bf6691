"""The study scripts (studies/) end to end on the lab cluster, in miniature."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli import REPO, clean_env, followup, records

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TRL_TEMPLATE = Path(__file__).parent / "trl_original.slurm_template"


def test_grad_accum_study_in_miniature(assets: Path, tmp_path: Path) -> None:
    """studies/grad_accum.sh at CPU scale through TRL's own template and the `--then` report: 2 variants
    (16 x 1 and 1 x 16, mini batch x accumulation) x 2 seeds, 2 PPO steps each."""
    out = tmp_path / "grad_accum"
    done = subprocess.run(
        ["bash", str(REPO / "studies" / "grad_accum.sh"), "--seeds", "2", "--steps", "2", "--out", str(out),
         "--runs", str(tmp_path / "runs"), "--template", str(TRL_TEMPLATE)],
        env=clean_env(ASSETS=str(assets)), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    jobs = records(run)
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"} and len(jobs) == 4
    then = followup(run)  # the report
    assert then and then["state"] == "COMPLETED"
    summary = (out / "summary.md").read_text()
    # One name per variant everywhere: the preset's, for the sweep's ppo (16 x 1) and ppo_step_grad_accu (1 x 16).
    for variant in ("grad accum 1", "grad accum 16"):
        assert f"| {variant} | 2 / 2 |" in summary, summary
    assert "missing seeds" not in summary and "| ppo |" not in summary
    # The verdict, computed by the report itself, and the page with plotly beside it.
    assert "`grad accum 16` against `grad accum 1`: **env/reward_mean**" in summary
    assert (out / "index.html").exists() and (out / "plotly.min.js").exists() and list(out.glob("*.png"))


def test_control_study_in_miniature(assets: Path, tmp_path: Path) -> None:
    """studies/control.sh at CPU scale: `--task control` x 2 seeds, 2 PPO steps each, and a report of each
    control token's reward."""
    out = tmp_path / "control"
    done = subprocess.run(
        ["bash", str(REPO / "studies" / "control.sh"), "--seeds", "2", "--steps", "1", "--out", str(out),
         "--runs", str(tmp_path / "runs")],
        env=clean_env(ASSETS=str(assets)), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert {j["state"] for j in records(run).values()} == {"COMPLETED"}
    assert followup(run)["state"] == "COMPLETED"
    summary = (out / "summary.md").read_text()
    assert "| ppo_control | 2 / 2 |" in summary, summary
    for token in ("negative", "neutral", "positive"):
        assert f"final env/reward_mean/{token}" in summary, summary
    assert (out / "curves.png").exists()  # a panel per token, and KL
