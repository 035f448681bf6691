"""The interactive page (benchmark/report/page.py) in a real headless Chromium: panels drawn by plotly,
controls through the URL hash and by hand, nothing fetched from outside its folder, user text escaped."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import plotly.offline
import pytest
from matplotlib.image import imread

from benchmark.report.page import PAGE_JS, PLOTLY_JS, PageData, Trace, write_page

METRICS = ["env/reward_mean", "objective/kl", "ppo/loss/total"]
AXES = ["step", "samples"]
VARIANTS = ["alpha", "beta"]
SEEDS = (1, 2, 3)
STEPS = 2500  # more than the page draws, so that thinning is on the way
COLOURS = {"alpha": (31, 119, 180), "beta": (255, 127, 14)}  # plotly's first two, in the lines' stroke
# --no-sandbox: tests may run as root, where chromium's sandbox refuses to start. The rest cut down chromium's own
# background traffic; what remains of it, `_Proxy` names.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--virtual-time-budget=5000"]  # fmt: skip


def trace(level: float, seeds: tuple[int, ...], per_x: float) -> Trace:
    """A rising curve per seed, with a stretch no seed logged (a gap the page must keep)."""
    x = np.arange(STEPS) * per_x
    lines = np.array([level + np.log1p(x / per_x / 100) + 0.1 * seed for seed in seeds])
    lines[:, 1000:1200] = np.nan
    mean = lines.mean(axis=0)
    spread = lines.std(axis=0, ddof=1) if len(seeds) > 1 else np.full(STEPS, np.nan)
    n = [0 if math.isnan(m) else len(seeds) for m in mean]
    per_seed = {f"seed {s}": (list(x), list(line)) for s, line in zip(seeds, lines, strict=True)}
    return Trace(list(x), list(mean), list(mean - spread), list(mean + spread), n, per_seed)


def page_data(variants: list[str] = VARIANTS) -> PageData:
    # The loss is logged by the first variant alone, one seed, against steps only: a panel with no band, and
    # a panel with nothing to draw against samples.
    traces = {
        metric: {axis: {v: trace(i, SEEDS, per_x) for i, v in enumerate(variants)}
                 for axis, per_x in zip(AXES, (1.0, 64.0), strict=True)}
        for metric in METRICS[:2]
    }  # fmt: skip
    traces[METRICS[2]] = {"step": {variants[0]: trace(0, SEEDS[:1], 1.0)}}
    return PageData(
        title="PPO sentiment: PEFT vs full", finding="PEFT reaches the same reward at half the memory.",
        verdicts=["**equivalent**: env/reward_mean", "**worse**: objective/kl (higher)"],
        metrics=METRICS, x_axes=AXES, variants=variants, traces=traces, band="std over seeds", ncols=2,
        ncols_legend=2, table_headers=["variant", "reward", "seeds"],
        table_rows=[[variants[0], "1.00 ± 0.10", "3"], [variants[1], "2.00 ± 0.20", "3"], ["gamma", "n/a", "0"]],
        table_sort_values=[[variants[0], 1.0, 3], [variants[1], 2.0, 3], ["gamma", float("nan"), 0]],
        provenance=[("command", "python -m trl_ppo.ppo --use_peft\n  --seed 1"), ("commit", "abc1234")],
        samples={variants[0]: [("The movie was", " great, I loved it", 2.5)], variants[1]: [("I", " did not", -1.0)]},
        images=[], warnings=["beta seed 3 stopped at step 2000"], footnote="Final values: the last 10 steps.",
    )  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing: scripts/test.sh installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the page's folder, `report/`: what the test servers serve."""
    root = tmp_path_factory.mktemp("site")
    write_page(root / "report", page_data())
    return root


def chromium(browser: str, url: str, profile: Path, *flags: str) -> str:
    """The DOM once the page's scripts ran, unless `flags` ask for a screenshot instead."""
    output = [] if any(flag.startswith("--screenshot") for flag in flags) else ["--dump-dom"]
    done = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *flags, *output, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def view(site: Path, **state: str) -> str:
    return (site / "report" / "index.html").as_uri() + ("#" + urlencode(state) if state else "")


def texts(dom: str, css_class: str) -> list[str]:
    """The text of plotly's SVG <text> elements of one class (titles, annotations), in document order."""
    return re.findall(rf'<text class="{css_class}"[^>]*>([^<]*)</text>', dom)


def lines(dom: str, rgb: tuple[int, int, int] | None = None) -> int:
    """Drawn lines, or those of one colour. Each has a gap, which plotly keeps by drawing it in two pieces
    (`js-line` paths): anything else is not a line the page means."""
    colour = "" if rgb is None else rf"(?=[^>]*stroke: rgb\({rgb[0]}, {rgb[1]}, {rgb[2]}\))"
    pieces = len(re.findall(rf'<path class="js-line"{colour}[^>]*\bd="M', dom))
    assert pieces % 2 == 0
    return pieces // 2


def panels(dom: str) -> int:
    return len(re.findall(r'<div class="js-plotly-plot"', dom))


def test_page_draws_a_panel_per_metric_and_the_table(browser: str, site: Path, tmp_path: Path) -> None:
    dom = chromium(browser, view(site), tmp_path)
    assert panels(dom) == 3 and 'class="main-svg"' in dom
    assert texts(dom, "gtitle") == METRICS
    assert texts(dom, "xtitle") == ["step"] * 3
    # plotly's own links and its upload button are off: nothing on the drawn page points away from it.
    assert not re.search(r'(?:src|href)="(?:[a-z]+:)?//', dom) and 'data-title="Share chart' not in dom
    # A mean line per variant and metric logged, in the variant's colour in every panel.
    assert lines(dom, COLOURS["alpha"]) == 3 and lines(dom, COLOURS["beta"]) == 2 and lines(dom) == 5
    # A band where there are seeds to spread: both variants in two panels, none for the one-seed loss. Each is
    # two shapes, one each side of the gap.
    bands = re.findall(r'<path class="js-fill" d="([^"]+)"', dom)
    assert len(bands) == 4 and all(band.count("M") == 2 for band in bands)
    rows = re.findall(r'<tr data-row="(\d)"><td>([^<]*)</td>', dom)
    assert rows == [("0", "alpha"), ("1", "beta"), ("2", "gamma")]
    for shown in ("PEFT reaches the same reward", "<strong>equivalent</strong>", "Final values: the last 10 steps.",
                  " great, I loved it", "abc1234", "beta seed 3 stopped"):  # fmt: skip
        assert shown in dom


def test_the_hash_picks_the_metrics_and_the_x_axis(browser: str, site: Path, tmp_path: Path) -> None:
    dom = chromium(browser, view(site, x="samples", metrics="objective/kl"), tmp_path)
    assert panels(dom) == 1 and texts(dom, "gtitle") == ["objective/kl"] and texts(dom, "xtitle") == ["samples"]
    assert lines(dom) == 2
    # A list as one value split at commas; the loss has nothing against samples, and says so.
    dom = chromium(browser, view(site, x="samples", metrics="env/reward_mean,ppo/loss/total"), tmp_path)
    assert texts(dom, "gtitle") == ["env/reward_mean", "ppo/loss/total"]
    assert texts(dom, "annotation-text") == ["not logged against samples"]
    # The view can be shared: the page's own link says the state it shows.
    assert 'href="#x=samples&amp;metrics=env%2Freward_mean&amp;metrics=ppo%2Floss%2Ftotal&amp;log=0' in dom


def test_seed_lines_smoothing_and_log_scale_follow_the_hash(browser: str, site: Path, tmp_path: Path) -> None:
    plain = chromium(browser, view(site, metrics="env/reward_mean"), tmp_path)
    seeds = chromium(browser, view(site, metrics="env/reward_mean", seeds="1", smooth="50", log="1"), tmp_path)
    assert lines(plain) == 2 and lines(seeds) == 2 + 2 * len(SEEDS)
    mean_path = re.compile(r'<path class="js-line"[^>]*\bd="([^"]+)"[^>]*stroke-width: 1\.8px')
    assert mean_path.findall(plain) != mean_path.findall(seeds)
    ticks = re.compile(r'<g class="ytick"><text[^>]*>([^<]*)<')
    assert ticks.findall(plain) != ticks.findall(seeds)
    assert 'href="#x=step&amp;metrics=env%2Freward_mean&amp;log=1&amp;smooth=50&amp;seeds=1"' in seeds


class _Server(ThreadingHTTPServer):
    """A server on a free local port that keeps every request it was sent, in order."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Files(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class _Proxy(BaseHTTPRequestHandler):
    """Records what chromium sends through it (a plain request or an HTTPS tunnel) and refuses it, except
    what chromium asks of its own services: none of the flags above stops it on every version (optimization
    guide's model list, the network clock, account checks, autofill), and a report page has no business with
    them."""

    server: _Server
    browser_own = ("accounts.google.com", "clients2.google.com", "update.googleapis.com",
                   "content-autofill.googleapis.com")  # fmt: skip

    def _refuse(self) -> None:
        host = self.path.partition(":")[0] if self.command == "CONNECT" else urlsplit(self.path).hostname
        if host not in self.browser_own:
            self.server.requests.append(f"{self.command} {self.path}")
        self.send_error(502)

    do_GET = do_POST = do_HEAD = do_CONNECT = _refuse  # noqa: N815 (http.server's names)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers(site: Path) -> Iterator[tuple[_Server, _Server]]:
    """`site` served over HTTP, and a proxy: (site, proxy)."""
    pair = (_Server(partial(_Files, directory=str(site))), _Server(_Proxy))
    yield pair
    for server in pair:
        server.shutdown()
        server.server_close()


def test_no_request_leaves_the_page_folder(browser: str, site: Path, servers: tuple[_Server, _Server],
                                           tmp_path: Path) -> None:  # fmt: skip
    files, proxy = servers
    # Chromium reaches loopback directly and anything else through the proxy, which records it. A canary page
    # that asks for an outside image proves the proxy sees what the page would fetch.
    (site / "canary").mkdir(exist_ok=True)
    (site / "canary" / "index.html").write_text('<img src="http://example.invalid/pixel.png">')
    via_proxy = f"--proxy-server=http://127.0.0.1:{proxy.port}"
    chromium(browser, f"http://127.0.0.1:{files.port}/canary/index.html", tmp_path / "canary", via_proxy)
    assert proxy.requests == ["GET http://example.invalid/pixel.png"]
    proxy.requests.clear()
    files.requests.clear()
    url = f"http://127.0.0.1:{files.port}/report/index.html#seeds=1&smooth=3"
    dom = chromium(browser, url, tmp_path / "page", via_proxy)
    assert panels(dom) == 3
    assert files.requests and all(path.startswith("/report/") for path in files.requests), files.requests
    assert sorted(set(files.requests)) == ["/report/index.html", f"/report/{PAGE_JS}", f"/report/{PLOTLY_JS}"]
    assert proxy.requests == []


def test_page_links_nothing_outside_and_plotly_is_written_once(tmp_path: Path) -> None:
    written = write_page(tmp_path, page_data())
    index, script = tmp_path / "index.html", tmp_path / PLOTLY_JS
    assert written == [index, script, tmp_path / PAGE_JS]
    page = index.read_text()
    links = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', page)
    assert links and all(not re.match(r"[a-z][a-z0-9+.-]*:|/", link, re.I) or link.startswith("data:")
                         for link in links), links  # fmt: skip
    assert "http://" not in page and "https://" not in page
    assert script.read_text() == plotly.offline.get_plotlyjs()
    before = script.stat().st_mtime_ns
    os.utime(script, ns=(before - 10**9, before - 10**9))  # a rewrite would now show as a newer time
    write_page(tmp_path, page_data())
    assert script.stat().st_mtime_ns == before - 10**9
    script.write_text("stale")
    write_page(tmp_path, page_data())
    assert script.read_text() == plotly.offline.get_plotlyjs()


def test_user_text_is_shown_as_written(browser: str, tmp_path: Path) -> None:
    evil = '</script><script>document.body.dataset.pwned = "name"</script>'
    page = page_data(variants=["alpha", evil])
    page = replace(page, samples={evil: [("<b>query</b>", '<img src=x onerror="document.body.dataset.pwned=1">', 1)]},
                   provenance=[("<i>label</i>", "<script>document.body.dataset.pwned = 2</script>")])  # fmt: skip
    write_page(tmp_path / "report", page)
    source = (tmp_path / "report" / "index.html").read_text()
    # Ours alone: plotly.js, the data, the page's script.
    assert source.count("<script") == 3 and source.count("</script>") == 3
    dom = chromium(browser, (tmp_path / "report" / "index.html").as_uri(), tmp_path / "profile")
    assert "data-pwned" not in dom and "<img" not in dom and "<b>" not in dom and "<i>" not in dom
    assert html_text(evil) in dom and html_text("<b>query</b>") in dom
    # The name survived the JSON too: the variant is drawn, in its colour.
    assert lines(dom, COLOURS["beta"]) == 2


def html_text(s: str) -> str:
    """`s` as a DOM serialiser writes it as text."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_screenshot_shows_the_curves(browser: str, site: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium(browser, view(site), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1100")
    assert shot.stat().st_size > 5_000
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    ink = (pixels < 230).any(axis=-1).mean()
    assert ink > 0.02
    for rgb in COLOURS.values():  # each variant's lines are on it
        assert (np.abs(pixels - rgb).max(axis=-1) < 10).sum() > 500


DRIVER = """<!doctype html><iframe id="page" src="report/index.html" width="1200" height="900"></iframe>
<pre id="result"></pre><script>
const frame = document.getElementById("page");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument, seen = [];
  const look = () => seen.push({
    hash: frame.contentWindow.location.hash,
    titles: [...doc.querySelectorAll(".gtitle")].map((t) => t.textContent),
    xtitles: [...doc.querySelectorAll(".xtitle")].map((t) => t.textContent),
    lines: doc.querySelectorAll("path.js-line").length,
    notes: [...doc.querySelectorAll(".annotation-text")].map((t) => t.textContent),
    rows: [...doc.querySelectorAll("#summary tbody tr")].map((r) => r.cells[0].textContent),
    sort: [...doc.querySelectorAll("#summary th")].map((th) => th.getAttribute("aria-sort")),
  });
  const change = (el, set) => { set(el); el.dispatchEvent(new Event("change")); look(); };
  look();
  change(doc.getElementById("x-axis"), (el) => { el.value = "samples"; });
  change(doc.querySelector("input[value='ppo/loss/total']"), (el) => { el.checked = false; });
  doc.querySelector("#legend button[data-variant=beta]").click(); look();
  const reward = doc.querySelectorAll("#summary th")[1];
  reward.click(); look();
  reward.click(); look();
  document.getElementById("result").textContent = JSON.stringify(seen);
});
</script>"""


def test_controls_redraw_and_write_the_hash(browser: str, site: Path, servers: tuple[_Server, _Server],
                                           tmp_path: Path) -> None:  # fmt: skip
    """A user's clicks, made by a page that holds ours in a frame (same origin, so it may reach in)."""
    (site / "driver.html").write_text(DRIVER)
    dom = chromium(browser, f"http://127.0.0.1:{servers[0].port}/driver.html", tmp_path)
    result = re.search(r'<pre id="result">([^<]*)</pre>', dom)
    assert result, dom[-2000:]
    start, x_axis, no_loss, no_beta, ascending, descending = json.loads(result.group(1).replace("&amp;", "&"))
    assert start["hash"] == "" and start["titles"] == METRICS and start["lines"] == 2 * 5  # two pieces each
    # The loss has nothing against samples: its panel says so instead of drawing empty axes.
    assert x_axis["xtitles"] == ["samples"] * 2 and x_axis["notes"] == ["not logged against samples"]
    assert x_axis["hash"].startswith("#x=samples&")
    assert no_loss["titles"] == METRICS[:2] and "metrics=objective%2Fkl" in no_loss["hash"]
    assert no_beta["lines"] == 2 * 2 and no_beta["hash"].endswith("&hide=beta")
    # Sorting by the reward's values (not its text); the row without one stays last both ways.
    assert ascending["rows"] == ["alpha", "beta", "gamma"] and ascending["sort"] == [None, "ascending", None]
    assert descending["rows"] == ["beta", "alpha", "gamma"] and descending["sort"][1] == "descending"
