// The report page's only code: plotly draws; this builds its traces from the data embedded in index.html
// and wires the controls. benchmark/report/page.py writes it beside each page.
"use strict";
const data = JSON.parse(document.getElementById("page-data").textContent);
const grid = document.getElementById("panels");
const metricBoxes = [...document.querySelectorAll("input[name=metric]")];
const xSelect = document.getElementById("x-axis");
const logBox = document.getElementById("log-y");
const smoothInput = document.getElementById("smooth");
const seedsBox = document.getElementById("seeds");
const legend = [...document.querySelectorAll("#legend button")];
const permalink = document.getElementById("permalink");
// No plotly logo link, no "Share chart" upload button, no MathJax: the page stays offline.
const config = {responsive: true, displaylogo: false, showSendToCloud: false, typesetMath: false};
const panels = new Map();  // metric -> its plot's div, while shown
let state;

// plotly reads a few HTML tags in its texts: user text is escaped so that it shows as written.
const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const smoothing = (s) => Math.min(Math.max(parseInt(s, 10) || 1, 1), 1000);

function readHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  // A list is the key repeated, or one value split at commas (where that is not itself a name).
  const pick = (key, names) => {
    const asked = q.getAll(key).flatMap((v) => (names.includes(v) ? [v] : v.split(",")));
    return names.filter((name) => asked.includes(name));
  };
  const metrics = pick("metrics", data.metrics);
  return {
    x: data.x_axes.includes(q.get("x")) ? q.get("x") : data.x_axes[0],
    metrics: metrics.length ? metrics : data.metrics,
    log: q.get("log") === "1",
    smooth: smoothing(q.get("smooth")),
    seeds: q.get("seeds") === "1",
    hide: pick("hide", data.variants),
  };
}

function hashOf(s) {
  const q = new URLSearchParams({x: s.x});
  if (s.metrics.length < data.metrics.length) s.metrics.forEach((m) => q.append("metrics", m));
  q.set("log", s.log ? "1" : "0");
  q.set("smooth", s.smooth);
  q.set("seeds", s.seeds ? "1" : "0");
  s.hide.forEach((v) => q.append("hide", v));
  return "#" + q.toString();
}

function fromControls() {
  return {
    x: xSelect.value,
    metrics: metricBoxes.filter((box) => box.checked).map((box) => box.value),
    log: logBox.checked,
    smooth: smoothing(smoothInput.value),
    seeds: seedsBox.checked,
    hide: legend.filter((b) => b.getAttribute("aria-pressed") === "false").map((b) => b.dataset.variant),
  };
}

function apply(s) {
  state = s;
  xSelect.value = s.x;
  metricBoxes.forEach((box) => { box.checked = s.metrics.includes(box.value); });
  logBox.checked = s.log;
  smoothInput.value = s.smooth;
  seedsBox.checked = s.seeds;
  legend.forEach((b) => b.setAttribute("aria-pressed", String(!s.hide.includes(b.dataset.variant))));
  permalink.setAttribute("href", hashOf(s));
  render();
}

// Rolling mean over the last n drawn points, skipping gaps in the window; a gap stays a gap.
function smooth(ys) {
  const n = state.smooth;
  if (n <= 1) return ys;
  const out = new Array(ys.length);
  let sum = 0, count = 0;
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] !== null) { sum += ys[i]; count++; }
    if (i >= n && ys[i - n] !== null) { sum -= ys[i - n]; count--; }
    out[i] = ys[i] === null ? null : sum / count;
  }
  return out;
}

function faded(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r},${g},${b},0.2)`;
}

// The band as one closed outline per stretch where it exists, stretches apart by a null: plotly fills each
// on its own, so a gap stays a gap (filling between a low and a high line would bridge it).
function bandShape(x, low, high) {
  const shape = {x: [], y: []};
  let start = null;
  for (let i = 0; i <= x.length; i++) {
    const present = i < x.length && low[i] !== null && high[i] !== null;
    if (present && start === null) start = i;
    if (!present && start !== null) {
      for (let j = start; j < i; j++) { shape.x.push(x[j]); shape.y.push(high[j]); }
      for (let j = i - 1; j >= start; j--) { shape.x.push(x[j]); shape.y.push(low[j]); }
      shape.x.push(null);
      shape.y.push(null);
      start = null;
    }
  }
  return shape;
}

function tracesOf(byVariant) {
  const out = [];
  data.variants.forEach((variant, i) => {
    const t = byVariant[variant];
    if (!t || state.hide.includes(variant)) return;
    const colour = data.colours[i % data.colours.length];
    const name = esc(variant);
    const low = smooth(t.low), high = smooth(t.high);
    const band = bandShape(t.x, low, high);
    const banded = band.x.length > 0;
    if (banded) {
      out.push({...band, mode: "none", fill: "toself", fillcolor: faded(colour), hoverinfo: "skip", name});
    }
    if (state.seeds) {
      for (const [label, [x, y]] of Object.entries(t.seeds)) {
        out.push({x, y: smooth(y), mode: "lines", line: {width: 0.8, color: colour}, opacity: 0.5,
                  name: `${name} ${esc(label)}`, hovertemplate: "%{y:.4~g}"});
      }
    }
    out.push({
      x: t.x, y: smooth(t.mean), mode: "lines", line: {width: 1.8, color: colour}, name,
      customdata: t.x.map((_, j) => [low[j], high[j], t.n[j]]),
      hovertemplate: "%{y:.4~g}" + (banded ? " (band %{customdata[0]:.4~g} to %{customdata[1]:.4~g})" : "")
        + ", seeds %{customdata[2]}",
    });
  });
  return out;
}

function layoutOf(metric, logged) {
  const note = {text: `not logged against ${esc(state.x)}`, showarrow: false, xref: "paper", yref: "paper", x: 0.5,
                y: 0.5};
  return {
    title: {text: esc(metric), font: {size: 14}},
    xaxis: {title: {text: esc(state.x)}, automargin: true, visible: logged},
    yaxis: {type: state.log ? "log" : "linear", automargin: true, visible: logged},
    margin: {l: 50, r: 10, t: 36, b: 40},
    showlegend: false,
    hovermode: "x unified",
    hoverlabel: {namelength: -1},
    annotations: logged ? [] : [note],
    // Zoom survives toggling seeds, smoothing or variants; a new x-axis or y scale starts unzoomed.
    uirevision: `${state.x}|${state.log}`,
  };
}

function render() {
  for (const [metric, div] of panels) {
    if (!state.metrics.includes(metric)) {
      Plotly.purge(div);
      div.remove();
      panels.delete(metric);
    }
  }
  for (const metric of state.metrics) {
    if (!panels.has(metric)) panels.set(metric, document.createElement("div"));
    const div = panels.get(metric);
    grid.appendChild(div);  // in panel order, whichever were shown before
    const byVariant = (data.traces[metric] || {})[state.x] || {};
    Plotly.react(div, tracesOf(byVariant), layoutOf(metric, Object.keys(byVariant).length > 0), config);
  }
}

function changed() {
  apply(fromControls());
  // replace, not push: the back button leaves the page rather than stepping through every click.
  location.replace(hashOf(state));
}

[...metricBoxes, xSelect, logBox, smoothInput, seedsBox].forEach((c) => c.addEventListener("change", changed));
legend.forEach((b) => b.addEventListener("click", () => {
  b.setAttribute("aria-pressed", String(b.getAttribute("aria-pressed") === "false"));
  changed();
}));
window.addEventListener("hashchange", () => {
  const s = readHash();
  if (hashOf(s) !== hashOf(state)) apply(s);
});

const table = document.getElementById("summary");
let sortedBy = {column: -1, direction: 1};
[...table.tHead.rows[0].cells].forEach((th, column) => th.addEventListener("click", () => {
  const direction = sortedBy.column === column ? -sortedBy.direction : 1;
  sortedBy = {column, direction};
  const key = (row) => data.sort[row.dataset.row][column];
  const rows = [...table.tBodies[0].rows].sort((a, b) => {
    const ka = key(a), kb = key(b);
    // Missing values last, whichever the direction; numbers before text.
    if (ka === null || kb === null) return (ka === null) - (kb === null);
    const order = typeof ka === typeof kb
      ? (typeof ka === "number" ? ka - kb : String(ka).localeCompare(String(kb)))
      : (typeof ka === "number" ? -1 : 1);
    return direction * order || a.dataset.row - b.dataset.row;
  });
  table.tBodies[0].append(...rows);
  [...table.tHead.rows[0].cells].forEach((cell) => cell.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
}));

apply(readHash());
