"""openrlbenchmark's `--filters` syntax, so that TRL's plotting lines run with only the module name changed.

    python -m benchmark.report \\
        --filters '?we=huggingface&wpn=trl&xaxis=_step&cen=exp_name&metrics=env/reward_mean&metrics=objective/kl' \\
            'sentiment_tuning?tag=v0.4.7-55-g110e672&cl=sentiment lvwerra/gpt2-imdb (PR-662)' \\
        --output-filename benchmark/trl/sentiment

Each `--filters` is a group. Its first item is a query string saying where the runs live and how to
read them; each further item selects one variant, `EXP_NAME?tag=T&tag=T2&user=U&cl=LABEL&KEY=VALUE`.
Pure functions only: the CLI fetches the runs, this module says which to fetch and which were chosen.

Where we differ from openrlbenchmark (rlops_multi_metrics.py), on purpose:
- Keys in a config are found with or without W&B's raw-form `.value` levels (`runs.config_value`).
- `we`/`wpn` may be left out when `--entity`/`--project` are given, or when the runs are local.
- `--env-ids` is optional: without it, `ceik` selects nothing. With several env ids, a selection
  becomes one variant per env, labelled `LABEL (ENV)`, rather than one panel per env.
- A selection without `cl=` is labelled by its exp name (openrlbenchmark: `we/wpn/EXP ({query})`);
  two selections with the same label are an error, since their runs would merge into one variant.
- The exp name before `?` is percent-decoded, so `%3F` can stand for a `?` in it. Query values
  are decoded as openrlbenchmark's `parse_qs` does: `%XX` escapes, and `+` is a space.
- Several `user=` match any of them (openrlbenchmark reads the first only). Unknown keys in a
  group's query string and a key given twice are errors, not silently ignored.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from benchmark.report.runs import Filters, Run, config_value, plain_key, value_matches

# openrlbenchmark's defaults for what a group's query string leaves out. Its x-axis and metric
# are CleanRL's (`global_step`, `charts/episodic_return`): TRL's lines always name theirs.
DEFAULT_X_AXIS = "global_step"
DEFAULT_ENV_ID_KEY = "env_id"
DEFAULT_EXP_NAME_KEY = "exp_name"
DEFAULT_METRICS = ("charts/episodic_return",)
# A group's query string: `metric` is rlops.py's one-metric spelling of rlops_multi_metrics' `metrics`.
GROUP_KEYS = ("we", "wpn", "xaxis", "ceik", "cen", "metrics", "metric")
# A selection's own keys; any other key is a config filter (openrlbenchmark's `query_filters`).
SELECTION_KEYS = ("tag", "user", "cl")

# The lookup `ceik`, `cen` and config filters use: a dotted key, tried as given, then without
# W&B's `.value` levels, then under TRL's config key (see runs.config_value).
config_lookup = config_value


@dataclass(frozen=True)
class Selection:
    """One variant: the runs whose config[cen] is `exp_name`, carrying every tag, by one of the users."""

    exp_name: str
    tags: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    label: str = ""  # `cl=`, else the exp name
    config: tuple[tuple[str, tuple[str, ...]], ...] = ()  # other KEY=VALUE pairs: config[KEY] is one of the values
    item: str = ""  # as typed, to name it in messages


@dataclass(frozen=True)
class FilterGroup:
    """One `--filters`: where its runs live, how to read them, and its selections."""

    entity: str | None  # `we`; None: --entity
    project: str | None  # `wpn`; None: --project
    x_axis: str  # `xaxis`
    env_id_key: str  # `ceik`: the config key `--env-ids` are matched against
    exp_name_key: str  # `cen`: the config key a selection's exp name is matched against
    metrics: tuple[str, ...]  # `metrics`, repeatable
    selections: tuple[Selection, ...]


@dataclass
class PlotConfig:
    """openrlbenchmark's `--pc.*` page layout (stored for the report page; not drawn from yet)."""

    ncols: int = 2
    """columns of the page's grid of panels"""
    ncols_legend: int = 1
    """columns of the legend"""


def parse_filters(groups: list[list[str]]) -> list[FilterGroup]:
    """`--filters` as tyro hands it (one list per occurrence) -> the groups; ValueError naming the bad item."""
    parsed = [_parse_group(items, number) for number, items in enumerate(groups, 1)]
    labelled: dict[str, str] = {}
    for selection in (s for group in parsed for s in group.selections):
        if selection.label in labelled:
            raise ValueError(
                f"--filters selections {labelled[selection.label]!r} and {selection.item!r} are both labelled "
                f"{selection.label!r}, so their runs would be one variant: give each its own cl=LABEL"
            )
        labelled[selection.label] = selection.item
    return parsed


def _parse_group(items: list[str], number: int) -> FilterGroup:
    if not items or not items[0].startswith("?"):
        first = repr(items[0]) if items else "nothing"
        raise ValueError(
            f"--filters group {number} starts with {first}: its first item must be a query string such as "
            "'?we=ENTITY&wpn=PROJECT&cen=EXP_NAME_KEY&metrics=METRIC'"
        )
    header, selections = items[0], items[1:]
    if not selections:
        raise ValueError(f"--filters group {number} ({header!r}) selects nothing: add EXP_NAME?tag=T&cl=LABEL items")
    query: dict[str, list[str]] = {}
    for key, value in _query(header[1:], header):
        query.setdefault(key, []).append(value)
    if unknown := sorted(set(query) - set(GROUP_KEYS)):
        raise ValueError(f"--filters {header!r}: unknown key {', '.join(unknown)} (known: {', '.join(GROUP_KEYS)})")

    def one(key: str, default: str | None) -> str | None:
        values = query.get(key, [])
        if len(values) > 1:
            raise ValueError(f"--filters {header!r}: {key} is given {len(values)} times; it takes one value")
        return values[0] if values else default

    metrics = tuple(dict.fromkeys(query.get("metrics", []) + query.get("metric", []))) or DEFAULT_METRICS
    return FilterGroup(
        entity=one("we", None),
        project=one("wpn", None),
        x_axis=one("xaxis", DEFAULT_X_AXIS) or DEFAULT_X_AXIS,
        env_id_key=one("ceik", DEFAULT_ENV_ID_KEY) or DEFAULT_ENV_ID_KEY,
        exp_name_key=one("cen", DEFAULT_EXP_NAME_KEY) or DEFAULT_EXP_NAME_KEY,
        metrics=metrics,
        selections=tuple(parse_selection(item) for item in selections),
    )


def parse_selection(item: str) -> Selection:
    """`EXP_NAME?tag=T&user=U&cl=LABEL&KEY=VALUE` -> a Selection; ValueError naming the item."""
    # Split at the first `?` rather than urlparse: an exp name like `task:model` is not a URL scheme,
    # and a `#` in a label is not a fragment.
    path, _, query = item.partition("?")
    exp_name = unquote(path)
    if not exp_name:
        raise ValueError(f"--filters selection {item!r} names no exp name before its '?'")
    pairs = _query(query, item)
    labels = [value for key, value in pairs if key == "cl"]
    if len(labels) > 1:
        raise ValueError(f"--filters selection {item!r} has {len(labels)} cl= labels; it takes one")
    config: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in SELECTION_KEYS:
            config.setdefault(key, []).append(value)
    return Selection(
        exp_name=exp_name,
        tags=tuple(value for key, value in pairs if key == "tag"),
        users=tuple(value for key, value in pairs if key == "user"),
        label=labels[0] if labels else exp_name,
        config=tuple((key, tuple(values)) for key, values in config.items()),
        item=item,
    )


def _query(query: str, item: str) -> list[tuple[str, str]]:
    """A query string's pairs, decoded; blank values dropped as openrlbenchmark's parse_qs drops them."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:  # e.g. `tag` without `=VALUE`, or a stray `&`
        raise ValueError(f"--filters item {item!r}: expected KEY=VALUE pairs joined by '&' ({error})") from None
    if any(not key for key, _ in pairs):
        raise ValueError(f"--filters item {item!r}: a pair has no key before its '='")
    return [(key, value) for key, value in pairs if value]


def env_ids_per_group(env_ids: list[list[str]], groups: int) -> list[list[str] | None]:
    """`--env-ids` for each group: once for them all, or once per group, as openrlbenchmark reads it."""
    if not env_ids:
        return [None] * groups
    if len(env_ids) == 1:
        return [env_ids[0]] * groups
    if len(env_ids) != groups:
        raise ValueError(
            f"--env-ids is given {len(env_ids)} times for {groups} --filters groups: give it once (for every group) "
            "or once per group, in the same order"
        )
    return list(env_ids)


def metrics_and_x_axis(groups: list[FilterGroup]) -> tuple[list[str], str]:
    """What the report draws: every group's metrics, in order, on the one x-axis they agree on."""
    axes = {group.x_axis for group in groups}
    if len(axes) > 1:
        raise ValueError(f"the --filters groups disagree on xaxis ({', '.join(sorted(axes))}): one report, one x-axis")
    return list(dict.fromkeys(m for group in groups for m in group.metrics)), axes.pop()


def cloud_queries(
    groups: list[FilterGroup], env_ids: list[list[str] | None], entity: str | None, project: str | None
) -> list[tuple[str, str, Filters]]:
    """The W&B queries that fetch every run the groups can select: (entity, project, server-side filters),
    one per selection and env id. They narrow by exp name, env id and tags; `select` does the rest."""
    queries = []
    for number, (group, envs) in enumerate(zip(groups, env_ids, strict=True), 1):
        where = (group.entity or entity, group.project or project)
        if not (where[0] and where[1]):
            raise ValueError(
                f"--filters group {number} names no W&B {'entity (we=)' if not where[0] else 'project (wpn=)'}: "
                "add it to its query string or give --entity/--project, or read local runs with --wandb-dir/--run-dir"
            )
        for selection in group.selections:
            for env in envs or [None]:
                # The server holds raw configs and `server_filters` adds the `.value` level itself.
                config = {plain_key(group.exp_name_key): selection.exp_name}
                if env is not None:
                    config[plain_key(group.env_id_key)] = env
                queries.append((where[0], where[1], Filters(tags=list(selection.tags), config=config)))
    return queries


def _variants(group: FilterGroup, env_ids: list[str] | None) -> Iterator[tuple[str, Selection, str | None]]:
    """(label, selection, env id) of each variant a group makes, in selection order, then env order."""
    for selection in group.selections:
        if not env_ids:
            yield selection.label, selection, None
        for env in env_ids or []:
            yield (selection.label if len(env_ids) == 1 else f"{selection.label} ({env})"), selection, env


def matches(run: Run, group: FilterGroup, selection: Selection, env_id: str | None = None) -> bool:
    """Whether a selection (in one env, when given) chooses this run."""
    return (
        value_matches(config_lookup(run.config, group.exp_name_key), selection.exp_name)
        and all(tag in run.tags for tag in selection.tags)
        and (not selection.users or run.user in selection.users)
        and (env_id is None or value_matches(config_lookup(run.config, group.env_id_key), env_id))
        and all(_one_of(config_lookup(run.config, key), values) for key, values in selection.config)
    )


def _one_of(actual: Any, values: tuple[str, ...]) -> bool:
    """A config filter matches as typed, as JSON (`--filter`'s rule) or as a Python literal
    (openrlbenchmark's rule: `True`, `1e-5`)."""
    for value in values:
        if value_matches(actual, value):
            return True
        try:
            if actual is not None and ast.literal_eval(value) == actual:
                return True
        except (ValueError, SyntaxError):
            pass
    return False


def select(runs: list[Run], group: FilterGroup, env_ids: list[str] | None) -> dict[str, list[Run]]:
    """label -> the runs each variant of the group chooses, in selection order; a variant that
    chooses none is there with an empty list (see `unmatched`)."""
    return {
        label: [run for run in runs if matches(run, group, selection, env)]
        for label, selection, env in _variants(group, env_ids)
    }


def select_groups(runs: list[Run], groups: list[FilterGroup], env_ids: list[list[str] | None]) -> dict[str, list[Run]]:
    """Every group's variants in one mapping, in order; ValueError when two end up with one label."""
    chosen: dict[str, list[Run]] = {}
    for group, envs in zip(groups, env_ids, strict=True):
        for label, variant in select(runs, group, envs).items():
            if label in chosen:
                raise ValueError(f"two --filters variants are labelled {label!r}: give each selection its own cl=")
            chosen[label] = variant
    return chosen


def unmatched(
    runs: list[Run], groups: list[FilterGroup], env_ids: list[list[str] | None], chosen: dict[str, list[Run]]
) -> list[str]:
    """A message for each variant that chose no run: the selection as typed, its env, and what the runs hold."""
    messages = []
    for group, envs in zip(groups, env_ids, strict=True):
        for label, selection, env in _variants(group, envs):
            if not chosen.get(label):
                where = f" in {group.env_id_key}={env}" if env is not None else ""
                hint = ""
                if selection.users and not any(run.user for run in runs):
                    hint = " (user= needs cloud runs: offline files do not record the W&B user)"
                messages.append(
                    f"--filters selection {selection.item!r}{where} (variant {label!r}) matches no run{hint}; "
                    + what_exists(runs, group)
                )
    return messages


def what_exists(runs: list[Run], group: FilterGroup, most: int = 10) -> str:
    """The values the runs read hold for the group's keys, most common first, to correct a selection by."""
    if not runs:
        return "no runs were read at all"

    def common(values: Counter[str]) -> str:
        shown = ", ".join(f"{value} ({n})" for value, n in values.most_common(most))
        return shown + (f", and {len(values) - most} more" if len(values) > most else "")

    parts = [f"the {len(runs)} runs read hold {group.exp_name_key}: "]
    parts[0] += common(Counter(str(config_lookup(run.config, group.exp_name_key)) for run in runs))
    envs = Counter(str(config_lookup(run.config, group.env_id_key)) for run in runs)
    parts.append(f"{group.env_id_key}: {common(envs)}")
    if tags := Counter(tag for run in runs for tag in run.tags):
        parts.append(f"tags: {common(tags)}")
    if users := Counter(run.user for run in runs if run.user):
        parts.append(f"users: {common(users)}")
    return "; ".join(parts)
