"""What the tasks themselves say about how often they ran: the markers behind every exactly-once test.

Each task appends `start SEED TIME` when it begins, `ok SEED TIME` when it succeeds and `end SEED TIME`
when it exits to a markers file outside the run dir, so the count does not depend on what the harness
recorded.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def marking(markers: Path, fail_first_try_of: tuple[int, ...] = (), sleep: float = 0.3) -> str:
    """A command that marks its start, success and end; seeds in `fail_first_try_of` fail their first try."""
    fail = " || ".join(f"test $2 = {seed}" for seed in fail_first_try_of)
    flaky = (f"if {{ {fail}; }} && ! test -e {markers}.tried-$2; then touch {markers}.tried-$2; exit 3; fi; "
             if fail else "")
    return (f"sh -c 'trap \"echo end $2 \\$(date +%s.%N) >> {markers}\" EXIT; "
            f"echo start $2 $(date +%s.%N) >> {markers}; sleep {sleep}; {flaky}"
            f"echo ok $2 $(date +%s.%N) >> {markers}' task")


def runs(markers: Path) -> tuple[dict[int, int], dict[int, list[tuple[float, float]]]]:
    """Successes per seed, and each run's (start, end) per seed (a run that never ended: end = inf)."""
    ok: dict[int, int] = defaultdict(int)
    spans: dict[int, list[list[float]]] = defaultdict(list)
    for line in markers.read_text().splitlines() if markers.exists() else []:
        what, seed, when = line.split()
        if what == "start":
            spans[int(seed)].append([float(when), float("inf")])
        elif what == "ok":
            ok[int(seed)] += 1
        else:
            still_open = [span for span in spans[int(seed)] if span[1] == float("inf")]
            still_open[0][1] = float(when)
    return dict(ok), {seed: [(a, b) for a, b in s] for seed, s in spans.items()}


def assert_exactly_once(markers: Path, seeds: list[int]) -> None:
    """Every seed succeeded exactly once, and no two runs of one seed overlapped in time."""
    ok, spans = runs(markers)
    assert {seed: ok.get(seed, 0) for seed in seeds} == dict.fromkeys(seeds, 1), f"successes per seed: {ok}"
    for seed, intervals in spans.items():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert end <= start, f"seed {seed} ran twice at once: {intervals}"
