"""openrlbenchmark's command line: TRL's own plotting lines parse as they are, select the runs they
name from offline files or the cloud, and a selection that matches nothing says so."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import string
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import tyro

from benchmark.report import cloud, main, offline
from benchmark.report import openrlbenchmark as orb
from benchmark.report.cli import ReportArgs
from benchmark.report.runs import Filters, Run, config_value

if TYPE_CHECKING:
    from tests.report.conftest import CloudStandIn, Sweep

CLASSIC = Path(__file__).parent / "classic_trl"
TRL_KEYS = "ceik=trl_ppo_trainer_config.value.reward_model&cen=trl_ppo_trainer_config.value.exp_name"
REWARD_MODEL = "sentiment-analysis:lvwerra/distilbert-imdb"

# Verbatim from TRL v0.11.4: benchmark/plot.sh (its first two commands), benchmark_level1_plot.sh (its DPO
# command) and benchmark_level2_plot.sh (its first). The shell's variables are filled in below.
PLOT_SH = r"""
python -m openrlbenchmark.rlops_multi_metrics \
    --filters '?we=huggingface&wpn=trl&xaxis=_step&ceik=trl_ppo_trainer_config.value.reward_model&cen=trl_ppo_trainer_config.value.exp_name&metrics=env/reward_mean&metrics=objective/kl' \
        "sentiment_tuning?tag=$BASELINE_PR_TAG&cl=sentiment lvwerra/gpt2-imdb ($BASELINE_PR_NAME)" \
    --env-ids sentiment-analysis:lvwerra/distilbert-imdb \
    --no-check-empty-runs \
    --pc.ncols 2 \
    --pc.ncols-legend 1 \
    --output-filename benchmark/trl/$BASELINE_PR_TAG/sentiment \
    --scan-history
"""  # noqa: E501
PLOT_SH_GRAD_ACCU = r"""
python -m openrlbenchmark.rlops_multi_metrics \
    --filters '?we=huggingface&wpn=trl&xaxis=_step&ceik=trl_ppo_trainer_config.value.reward_model&cen=trl_ppo_trainer_config.value.exp_name&metrics=env/reward_mean&metrics=objective/kl' \
        "sentiment_tuning?tag=$BASELINE_PR_TAG&cl=sentiment lvwerra/gpt2-imdb ($BASELINE_PR_NAME)" \
        "sentiment_tuning_step_grad_accu?tag=$BASELINE_PR_TAG&cl=sentiment lvwerra/gpt2-imdb gradient accumulation ($BASELINE_PR_NAME)" \
    --env-ids sentiment-analysis:lvwerra/distilbert-imdb \
    --no-check-empty-runs \
    --pc.ncols 2 \
    --pc.ncols-legend 1 \
    --output-filename benchmark/trl/$BASELINE_PR_TAG/gradient_accu \
    --scan-history
"""  # noqa: E501
LEVEL1_DPO = r"""
python -m openrlbenchmark.rlops_multi_metrics \
    --filters '?we=huggingface&wpn=trl&xaxis=_step&ceik=output_dir&cen=_name_or_path&metrics=train/rewards/accuracies&metrics=train/loss' \
        "gpt2$TAGS_STRING" \
    --env-ids dpo_anthropic_hh \
    --no-check-empty-runs \
    --pc.ncols 2 \
    --pc.ncols-legend 1 \
    --output-filename benchmark/trl/$FOLDER_STRING/dpo \
    --scan-history
"""  # noqa: E501
LEVEL2 = r"""
python -m openrlbenchmark.rlops_multi_metrics \
    --filters '?we=huggingface&wpn=trl&xaxis=_step&ceik=trl_ppo_trainer_config.value.reward_model&cen=trl_ppo_trainer_config.value.exp_name&metrics=env/reward_mean&metrics=objective/kl' \
        "ppo$TAGS_STRING" \
        "ppo_gpt2xl_grad_accu$TAGS_STRING" \
    --env-ids sentiment-analysis:lvwerra/distilbert-imdb \
    --no-check-empty-runs \
    --pc.ncols 2 \
    --pc.ncols-legend 1 \
    --output-filename benchmark/trl/$FOLDER_STRING/different_models \
    --scan-history
"""  # noqa: E501
# As plot.sh sets them, and as benchmark_and_report.sh builds TAGS_STRING from a run's W&B tags.
SHELL_VARS = {
    "BASELINE_PR_TAG": "v0.4.7-55-g110e672",
    "BASELINE_PR_NAME": "PR-662",
    "TAGS_STRING": "?tag=v0.11.4-3-gabc1234&tag=pr-2000",
    "FOLDER_STRING": "v0.11.4-3-gabc1234_pr-2000",
}


def trl_argv(script: str) -> list[str]:
    """A TRL plotting command as the shell hands it to Python, with `python -m MODULE` cut off."""
    words = shlex.split(string.Template(script.replace("\\\n", " ")).substitute(SHELL_VARS))
    assert words[:3] == ["python", "-m", "openrlbenchmark.rlops_multi_metrics"]
    return words[3:]


# --- the parser ---------------------------------------------------------------------------------------------------


def test_trl_plot_sh_parses_as_openrlbenchmark_reads_it() -> None:
    report = tyro.cli(ReportArgs, args=trl_argv(PLOT_SH_GRAD_ACCU))
    args = report.openrlbenchmark
    (group,) = orb.parse_filters(args.filters)
    assert group == orb.FilterGroup(
        entity="huggingface",
        project="trl",
        x_axis="_step",
        env_id_key="trl_ppo_trainer_config.value.reward_model",
        exp_name_key="trl_ppo_trainer_config.value.exp_name",
        metrics=("env/reward_mean", "objective/kl"),
        selections=(
            orb.Selection(
                "sentiment_tuning",
                tags=("v0.4.7-55-g110e672",),
                label="sentiment lvwerra/gpt2-imdb (PR-662)",
                item="sentiment_tuning?tag=v0.4.7-55-g110e672&cl=sentiment lvwerra/gpt2-imdb (PR-662)",
            ),
            orb.Selection(
                "sentiment_tuning_step_grad_accu",
                tags=("v0.4.7-55-g110e672",),
                label="sentiment lvwerra/gpt2-imdb gradient accumulation (PR-662)",
                item="sentiment_tuning_step_grad_accu?tag=v0.4.7-55-g110e672"
                "&cl=sentiment lvwerra/gpt2-imdb gradient accumulation (PR-662)",
            ),
        ),
    )
    assert args.env_ids == [[REWARD_MODEL]] and args.check_empty_runs is False and args.scan_history is True
    assert (report.pc.ncols, report.pc.ncols_legend) == (2, 1)
    assert args.output_filename == Path("benchmark/trl/v0.4.7-55-g110e672/gradient_accu")


def test_trl_level_plots_parse_tags_strings_and_other_keys() -> None:
    dpo = tyro.cli(ReportArgs, args=trl_argv(LEVEL1_DPO)).openrlbenchmark
    (group,) = orb.parse_filters(dpo.filters)
    assert (group.env_id_key, group.exp_name_key) == ("output_dir", "_name_or_path")
    assert group.metrics == ("train/rewards/accuracies", "train/loss")
    assert group.selections[0].exp_name == "gpt2" and group.selections[0].tags == ("v0.11.4-3-gabc1234", "pr-2000")
    level2 = tyro.cli(ReportArgs, args=trl_argv(LEVEL2)).openrlbenchmark
    (group,) = orb.parse_filters(level2.filters)
    assert [s.label for s in group.selections] == ["ppo", "ppo_gpt2xl_grad_accu"]  # no cl=: the exp name
    assert tyro.cli(ReportArgs, args=trl_argv(PLOT_SH)).openrlbenchmark.output_filename.name == "sentiment"


def test_repeated_filters_make_groups_and_defaults_are_openrlbenchmarks() -> None:
    report = tyro.cli(ReportArgs, args=["--filters", "?we=a&wpn=b", "x", "y", "--filters", "?wpn=c&metric=m", "z"])
    args = report.openrlbenchmark
    assert args.filters == [["?we=a&wpn=b", "x", "y"], ["?wpn=c&metric=m", "z"]]
    first, second = orb.parse_filters(args.filters)
    assert [s.exp_name for s in first.selections] == ["x", "y"] and second.selections[0].exp_name == "z"
    assert (first.x_axis, first.env_id_key, first.exp_name_key) == ("global_step", "env_id", "exp_name")
    assert first.metrics == ("charts/episodic_return",) and second.metrics == ("m",)
    assert (second.entity, second.project) == (None, "c")
    assert args.check_empty_runs is True and (report.pc.ncols, report.pc.ncols_legend) == (2, 1)
    assert orb.metrics_and_x_axis([first, second]) == (["charts/episodic_return", "m"], "global_step")


def test_labels_and_names_are_url_decoded() -> None:
    selection = orb.parse_selection("a%3Fb?cl=gpt2%20%28PR%2B1%29+w/ peft&tag=t%26u&tag=v&user=me&seed=1&seed=2")
    assert selection.exp_name == "a?b"
    assert selection.label == "gpt2 (PR+1) w/ peft"  # `+` is a space, as parse_qs reads it
    assert selection.tags == ("t&u", "v") and selection.users == ("me",)
    assert selection.config == (("seed", ("1", "2")),)
    assert orb.parse_selection("ppo?tag=x&cl=").label == "ppo"  # a blank value is no value
    assert orb.parse_selection("task:model#2").exp_name == "task:model#2"  # not a URL's scheme or fragment


@pytest.mark.parametrize(
    ("groups", "named"),
    [
        ([["we=a&wpn=b", "ppo"]], "'we=a&wpn=b'"),  # the query string lacks its '?'
        ([["?we=a"]], "'?we=a'"),  # no selection
        ([["?we=a&colour=red", "ppo"]], "colour"),
        ([["?we=a&we=b", "ppo"]], "we is given 2 times"),
        ([["?", "ppo?tag"]], "'ppo?tag'"),
        ([["?", "ppo?tag=a&&cl=b"]], "'ppo?tag=a&&cl=b'"),
        ([["?", "?tag=a"]], "'?tag=a'"),
        ([["?", "ppo?=a"]], "'ppo?=a'"),
        ([["?", "ppo?cl=a&cl=b"]], "2 cl= labels"),
        ([["?", "ppo?tag=a"], ["?", "ppo?tag=b"]], "'ppo?tag=a' and 'ppo?tag=b' are both labelled 'ppo'"),
    ],
)
def test_bad_items_are_named(groups: list[list[str]], named: str) -> None:
    with pytest.raises(ValueError, match="--filters") as error:
        orb.parse_filters(groups)
    assert named in str(error.value)


def test_bad_combinations_are_named() -> None:
    a, b = orb.parse_filters([["?we=e&xaxis=_step", "a"], ["?xaxis=_runtime", "b"]])
    with pytest.raises(ValueError, match="disagree on xaxis"):
        orb.metrics_and_x_axis([a, b])
    assert orb.env_ids_per_group([["e"]], 2) == [["e"], ["e"]]
    assert orb.env_ids_per_group([["e"], ["f", "g"]], 2) == [["e"], ["f", "g"]]
    with pytest.raises(ValueError, match="--env-ids is given 3 times for 2"):
        orb.env_ids_per_group([["e"], ["f"], ["g"]], 2)
    with pytest.raises(ValueError, match=r"group 2 names no W&B entity \(we=\)"):
        orb.cloud_queries([a, b], [None, None], None, "p")


# --- choosing runs ---------------------------------------------------------------------------------------------------


def run(run_id: str, config: dict, tags: tuple[str, ...] = (), user: str = "") -> Run:
    return Run(run_id, run_id, "finished", config, {}, pd.DataFrame(), tags=list(tags), user=user)


def ids(chosen: dict[str, list[Run]]) -> dict[str, list[str]]:
    return {label: [r.id for r in runs] for label, runs in chosen.items()}


def trl(exp: str, reward_model: str, seed: int = 1) -> dict:
    return {"trl_ppo_trainer_config": {"exp_name": exp, "reward_model": reward_model, "seed": seed}}


def test_config_keys_resolve_with_or_without_wandbs_value_levels() -> None:
    plain = trl("ppo", "rm")
    for key in ("trl_ppo_trainer_config.value.exp_name", "trl_ppo_trainer_config.exp_name", "exp_name"):
        assert orb.config_lookup(plain, key) == "ppo"
    assert orb.config_lookup({"env_id": "CartPole-v1"}, "env_id.value") == "CartPole-v1"
    assert orb.config_lookup({"a": {"value": 1}}, "a.value") == 1  # a real `value` key is found as given first
    assert config_value(plain, "trl_ppo_trainer_config.value.missing") is None


def test_select_by_exp_name_tags_user_env_and_config() -> None:
    runs = [
        run("1", trl("ppo", "rm1"), ("v1", "pr")),
        run("2", trl("ppo", "rm2"), ("v1",), user="me"),
        run("3", trl("ppo", "rm1", seed=2), ("v2",)),
        run("4", trl("ppo_xl", "rm1"), ("v1",), user="you"),
    ]
    (group,) = orb.parse_filters([[f"?{TRL_KEYS}", "ppo?tag=v1&cl=base", "ppo?seed=2&cl=two", "ppo_xl?user=you"]])
    assert ids(orb.select(runs, group, None)) == {"base": ["1", "2"], "two": ["3"], "ppo_xl": ["4"]}
    assert ids(orb.select(runs, group, ["rm1"])) == {"base": ["1"], "two": ["3"], "ppo_xl": ["4"]}
    assert ids(orb.select(runs, group, ["rm1", "rm2"])) == {
        "base (rm1)": ["1"], "base (rm2)": ["2"], "two (rm1)": ["3"], "two (rm2)": [],
        "ppo_xl (rm1)": ["4"], "ppo_xl (rm2)": [],
    }  # fmt: skip
    (mine,) = orb.parse_filters([[f"?{TRL_KEYS}", "ppo?user=me&user=them"]])
    assert ids(orb.select(runs, mine, None)) == {"ppo": ["2"]}

    chosen = orb.select_groups(runs, [group], [["rm1", "rm2"]])
    (two, xl) = orb.unmatched(runs, [group], [["rm1", "rm2"]], chosen)
    assert "'ppo?seed=2&cl=two' in trl_ppo_trainer_config.value.reward_model=rm2 (variant 'two (rm2)')" in two
    assert "exp_name: ppo (3), ppo_xl (1)" in xl and "reward_model: rm1 (3), rm2 (1)" in xl and "users: me (1)" in xl


def test_cloud_queries_narrow_each_selection_on_the_server() -> None:
    groups = orb.parse_filters([[f"?we=hf&wpn=trl&{TRL_KEYS}", "ppo?tag=v1", "ppo_xl"], ["?wpn=other", "dqn"]])
    queries = orb.cloud_queries(groups, [["rm"], None], "me", "mine")
    assert [(e, p) for e, p, _ in queries] == [("hf", "trl"), ("hf", "trl"), ("me", "other")]
    assert cloud.server_filters(queries[0][2]) == {
        "$and": [
            {"tags": {"$in": ["v1"]}},
            {"config.trl_ppo_trainer_config.value.exp_name": {"$in": ["ppo"]}},
            {"config.trl_ppo_trainer_config.value.reward_model": {"$in": ["rm"]}},
        ]
    }
    assert queries[2][2] == Filters(config={"exp_name": "dqn"})


# --- the real command ---------------------------------------------------------------------------------------------


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmark.report", *args], capture_output=True, text=True, timeout=300, check=False
    )


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def final_reward(sweep: Sweep, variant: str, seeds: tuple[int, ...] = (1, 2)) -> float:
    return statistics.fmean(
        statistics.fmean(r["env/reward_mean"] for r in sweep.runs[variant, s].rows[-10:]) for s in seeds
    )


def test_classic_trl_run_through_trls_own_flags(tmp_path: Path) -> None:
    (path,) = offline.find_run_files(CLASSIC)
    classic, _ = offline.read_run(path)
    reward_model = classic.config["trl_ppo_trainer_config"]["reward_model"]
    assert reward_model == REWARD_MODEL and classic.config["trl_ppo_trainer_config"]["exp_name"] == "classic_trl"
    stem = tmp_path / "benchmark/trl/baseline"
    done = report(
        "--wandb-dir", str(CLASSIC),
        "--filters", f"?we=huggingface&wpn=trl&xaxis=_step&{TRL_KEYS}&metrics=env/reward_mean&metrics=objective/kl",
        "classic_trl?cl=sentiment classic (PR-662)",
        "--env-ids", reward_model, "--no-check-empty-runs", "--pc.ncols", "2", "--pc.ncols-legend", "1",
        "--output-filename", str(stem), "--scan-history",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = rows(stem).values()
    assert row["variant"] == "sentiment classic (PR-662)" and row["seeds_done"] == "1"
    assert float(row["reward_mean"]) == 2.5 and row["kl_mean"]
    assert (stem / "curves.png").stat().st_size > 10_000


def test_sweep_selections_with_labels_and_tags(sweep: Sweep, tmp_path: Path) -> None:
    done = report(
        "--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(tmp_path),
        "--filters", "?xaxis=_step&cen=trl_ppo_trainer_config.value.exp_name&metrics=env/reward_mean",
        "sentiment_tuning?tag=report-test&cl=baseline%20(PR-1)",
        "--filters", "?xaxis=_step&cen=trl_ppo_trainer_config.exp_name&metrics=objective/kl",
        "sentiment_tuning_gpt2xl_grad_accu?tag=report-test&cl=gpt2-xl+w/+grad+accu",
        "sentiment_tuning_gpt2xl_grad_accu?tag=report-test&cl=gpt2-xl seed 1&seed=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path)
    assert list(table) == ["baseline (PR-1)", "gpt2-xl w/ grad accu", "gpt2-xl seed 1"]  # selection order
    baseline, xl, seed1 = table.values()
    # The failed third seed is chosen, and left out of the averages as in any report.
    assert (baseline["seeds_done"], baseline["seeds_crashed"]) == ("2", "1")
    assert float(baseline["reward_mean"]) == pytest.approx(final_reward(sweep, "sentiment_tuning"))
    assert xl["seeds_done"] == "2" and seed1["seeds_done"] == "1"  # one run in two variants
    assert float(xl["reward_mean"]) == pytest.approx(final_reward(sweep, "sentiment_tuning_gpt2xl_grad_accu"))
    assert set(table["baseline (PR-1)"]) >= {"reward_mean", "kl_mean"}  # the union of the groups' metrics
    drawn = pd.read_csv(tmp_path / "curves.csv")
    assert set(drawn["variant"]) == set(table) and "_step" in drawn


def test_cloud_selections_fetch_from_we_and_wpn(sweep: Sweep, wandb_cloud: CloudStandIn, tmp_path: Path) -> None:
    done = report(
        "--cache-dir", str(tmp_path / "cache"), "--output-filename", str(tmp_path / "xl"),
        "--filters", "?we=lab&wpn=trl&xaxis=_step&cen=trl_ppo_trainer_config.value.exp_name&metrics=env/reward_mean",
        "sentiment_tuning_gpt2xl_grad_accu?tag=report-test&user=tester&cl=xl",
        "sentiment_tuning_peft?user=someone-else&cl=not ours", "--no-check-empty-runs",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = rows(tmp_path / "xl").values()
    assert row["variant"] == "xl" and row["seeds_done"] == "2"
    assert float(row["reward_mean"]) == pytest.approx(final_reward(sweep, "sentiment_tuning_gpt2xl_grad_accu"))
    assert "warning:" in done.stderr and "'sentiment_tuning_peft?user=someone-else&cl=not ours'" in done.stderr
    asked = [json.loads(v["filters"]) for op, v in wandb_cloud.operations if op == "Runs"]
    narrowed = Filters(
        tags=["report-test"], config={"trl_ppo_trainer_config.exp_name": "sentiment_tuning_gpt2xl_grad_accu"}
    )
    assert cloud.server_filters(narrowed) in asked and len(asked) == 2  # one query per selection


def test_check_empty_runs_fails_naming_the_selection_and_no_check_warns(tmp_path: Path) -> None:
    args = [
        "--wandb-dir", str(CLASSIC), "--output-dir", str(tmp_path),
        "--filters", f"?xaxis=_step&{TRL_KEYS}&metrics=env/reward_mean", "classic_trl", "classic_trl_typo?tag=v1",
    ]  # fmt: skip
    checked = report(*args, "--check-empty-runs")
    assert checked.returncode == 2 and "error:" in checked.stderr
    assert "'classic_trl_typo?tag=v1'" in checked.stderr and "exp_name: classic_trl (1)" in checked.stderr
    assert not (tmp_path / "summary.csv").exists()
    unchecked = report(*args, "--no-check-empty-runs")
    assert unchecked.returncode == 0, unchecked.stderr
    assert "warning:" in unchecked.stderr and "'classic_trl_typo?tag=v1'" in unchecked.stderr
    assert list(rows(tmp_path)) == ["classic_trl"]


def test_unusable_filters_exit_2_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--output-dir", str(tmp_path)]
    assert main([*base, "--filters", "?we=a&wpn=b&xaxis=_step&colour=red", "ppo"]) == 2
    assert "colour" in capsys.readouterr().err
    assert main([*base, "--filters", "?wpn=b", "ppo"]) == 2  # where in the cloud?
    assert "names no W&B entity" in capsys.readouterr().err
    assert main([*base, "--wandb-dir", str(CLASSIC), "--filters", "?", "classic_trl", "--preset", "peft"]) == 2
    assert "drop --preset" in capsys.readouterr().err
