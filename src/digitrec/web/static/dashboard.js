// Neural Digit Recognizer, the dashboard: draws GET /api/v1/stats every few seconds.
//
// The page holds no figures of its own. It asks with the same short-lived page token as
// the main page (GET /web/token, sent as X-Web-Token; see api.js), refreshes every
// REFRESH_MS while the tab is visible and stops while it is hidden. Charts are uPlot
// (vendored in /static/vendor/uplot, loaded before this module); colours come from the
// page's CSS variables, so light and dark follow prefers-color-scheme.

import { ApiError, callApi } from "./api.js";

const ENDPOINTS = { stats: "/api/v1/stats" };
const REFRESH_MS = 5000;
const CHART_HEIGHT = 180;
const DIGITS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

// --- small helpers ------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)}\u00a0%`);
const ms = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(1)}\u00a0ms`);
const count = (n) => n.toLocaleString("en");

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function theme() {
  return {
    accent: cssVar("--accent"),
    rest: cssVar("--bar-rest"),
    text: cssVar("--muted"),
    line: cssVar("--line"),
    error: cssVar("--error"),
    focus: cssVar("--focus"),
  };
}

// --- charts -------------------------------------------------------------------------------

const charts = new Map(); // container id -> { plot, shape }

function axes(colors, xValues, yLabel) {
  const style = { stroke: colors.text, grid: { stroke: colors.line, width: 1 }, ticks: { stroke: colors.line } };
  const x = xValues ? { ...style, values: xValues } : style;
  return [x, { ...style, label: yLabel, size: 50 }];
}

function widthOf(node) {
  return Math.max(200, Math.floor(node.clientWidth));
}

// Draw or update one chart: recreated when its shape (series, x labels) changes.
function chart(id, shape, makeOptions, data) {
  const node = $(id);
  // What is drawn, added up per series: lets a test check a chart against /metrics.
  node.dataset.totals = JSON.stringify(data.slice(1).map((series) => series.reduce((a, v) => a + (v ?? 0), 0)));
  const known = charts.get(id);
  if (known && known.shape === shape) {
    known.plot.setData(data);
    return;
  }
  known?.plot.destroy();
  const options = { width: widthOf(node), height: CHART_HEIGHT, legend: { show: false }, ...makeOptions(theme()) };
  charts.set(id, { plot: new window.uPlot(options, data, node), shape });
}

function bars(colors, stroke) {
  return { stroke, fill: stroke, width: 0, paths: window.uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false } };
}

function categoryAxis(labels) {
  return (u, splits) => splits.map((v) => (Number.isInteger(v) && labels[v] !== undefined ? labels[v] : ""));
}

function categoryScale() {
  return { x: { time: false, range: (u, min, max) => [min - 0.6, max + 0.6] } };
}

window.addEventListener("resize", () => {
  for (const [id, { plot }] of charts) plot.setSize({ width: widthOf($(id)), height: CHART_HEIGHT });
});

// --- sections -----------------------------------------------------------------------------

function rate(x) {
  return x.toFixed(x < 1 ? 3 : 1);
}

function showTraffic(traffic) {
  $("traffic-count").textContent = count(traffic.requests);
  $("traffic-rate").textContent = rate(traffic.per_second);
  $("traffic-errors").textContent = count(traffic.client_errors + traffic.server_errors);
  $("error-rate").textContent = pct(traffic.error_rate);
  $("latency-p50").textContent = ms(traffic.latency_p50_ms);
  $("latency-p95").textContent = ms(traffic.latency_p95_ms);
  const minutes = traffic.minutes;
  const times = minutes.map((m) => Date.parse(m.minute) / 1000);
  chart("chart-traffic", "traffic", (c) => ({
    scales: { y: { range: (u, min, max) => [0, Math.max(0.1, max)] } },
    axes: axes(c, null, "per second"),
    series: [
      {},
      { label: "requests/s", stroke: c.accent, width: 2 },
      { label: "errors/s", stroke: c.error, width: 2 },
    ],
    legend: { show: true },
  }), [times, minutes.map((m) => m.requests / 60), minutes.map((m) => (m.client_errors + m.server_errors) / 60)]);
  chart("chart-latency", "latency", (c) => ({
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max ?? 1)] } },
    axes: axes(c, null, "ms"),
    series: [
      {},
      { label: "p50 ms", stroke: c.accent, width: 2, spanGaps: false, points: { show: true, size: 5 } },
      { label: "p95 ms", stroke: c.focus, width: 2, dash: [6, 4], spanGaps: false, points: { show: true, size: 5 } },
    ],
    legend: { show: true },
  }), [times, minutes.map((m) => m.latency_p50_ms), minutes.map((m) => m.latency_p95_ms)]);
}

function showDraws(draws) {
  $("draws-count").textContent = count(draws.predictions);
  $("flagged-share").textContent = pct(draws.flagged_share);
  chart("chart-digits", "digits", (c) => ({
    scales: categoryScale(),
    axes: axes(c, categoryAxis(DIGITS.map(String)), "answers"),
    series: [{}, { label: "answers", ...bars(c, c.accent) }],
  }), [DIGITS, draws.by_digit]);
  $("digit-counts").replaceChildren(
    ...DIGITS.map((d) => el("li", { dataset: { digit: String(d) } }, el("span", { className: "k" }, String(d)), el("span", { className: "v" }, count(draws.by_digit[d])))),
  );
  const edges = draws.confidence_edges;
  const labels = draws.confidence_counts.map((_, i) => `${Math.round(edges[i] * 100)}`);
  chart("chart-confidence", "confidence", (c) => ({
    scales: categoryScale(),
    axes: axes(c, categoryAxis(labels), "answers"),
    series: [{}, { label: "answers", ...bars(c, c.rest) }],
  }), [labels.map((_, i) => i), draws.confidence_counts]);
  const verdicts = Object.entries(draws.by_verdict).sort((a, b) => b[1] - a[1]);
  $("verdicts").replaceChildren(
    ...verdicts.map(([verdict, n]) => el("li", { dataset: { verdict } }, `${verdict.replaceAll("_", " ")}: `, el("strong", {}, count(n)))),
  );
}

function interval(row) {
  if (row.accuracy === null) return "no corrections yet";
  return `${pct(row.accuracy)} (95\u00a0% interval ${pct(row.accuracy_low)}–${pct(row.accuracy_high)}, ${count(row.corrections)} corrections)`;
}

function accuracyBar(row) {
  const bar = el("span", { className: "ci", ariaHidden: "true" });
  if (row.accuracy !== null) {
    bar.style.setProperty("--lo", row.accuracy_low);
    bar.style.setProperty("--hi", row.accuracy_high);
    bar.style.setProperty("--p", row.accuracy);
    bar.append(el("span", { className: "ci-range" }), el("span", { className: "ci-point" }));
  }
  return bar;
}

function showModels(models) {
  const arms = [["Production", models.production], ["Candidate", models.candidate]];
  $("arms").replaceChildren(
    ...arms.map(([title, ref]) => el("div", { className: "arm" }, el("span", { className: "arm-title" }, title), el("code", { className: "arm-ref" }, ref ?? "none"))),
  );
  const ab = models.experiment;
  $("ab").hidden = ab === null;
  const rows = ab ? ab.arms : models.online;
  if (ab) {
    $("ab-state").textContent = ab.running ? `#${ab.id}, running` : `#${ab.id}, stopped`;
    $("ab-verdict").textContent = ab.verdict.replaceAll("_", " ");
    $("ab-verdict").dataset.verdict = ab.verdict;
    $("ab-message").textContent = ab.message;
  }
  $("online").replaceChildren(
    ...rows.map((row) => el(
      "li",
      { dataset: { model: row.model, corrections: String(row.corrections) } },
      el("span", { className: "online-model" }, row.arm ? `${row.arm}: ` : "", el("code", {}, row.model)),
      accuracyBar(row),
      el("span", { className: "online-figures" }, interval(row)),
    )),
  );
  $("online-empty").hidden = rows.some((row) => row.corrections > 0);
}

function said(digit, verdict) {
  return verdict === "digit" ? String(digit) : verdict.replaceAll("_", " ");
}

function showCorrections(corrections) {
  $("corrections").replaceChildren(
    ...corrections.map((c) => {
      const truth = c.label === null ? "not a digit" : String(c.label);
      return el(
        "li",
        { className: c.right ? "shot right" : "shot wrong", dataset: { id: c.prediction_id } },
        el("img", { src: c.image, width: 56, height: 56, alt: `input the model read as ${said(c.digit, c.verdict)}` }),
        el("span", { className: "shot-said" }, "model: ", el("strong", {}, said(c.digit, c.verdict))),
        el("span", { className: "shot-truth" }, "person: ", el("strong", {}, c.right ? "right" : truth)),
      );
    }),
  );
  $("corrections-empty").hidden = corrections.length > 0;
}

function heatmap(matrix) {
  const max = Math.max(1, ...matrix.flatMap((row, i) => row.filter((_, j) => j !== i)));
  const grid = el("div", { className: "heatmap", role: "table", ariaLabel: "Confusion matrix: rows true digit, columns predicted" });
  grid.append(el("span", { className: "hm-corner" }, "true\\said"), ...DIGITS.map((d) => el("span", { className: "hm-head" }, String(d))));
  matrix.forEach((row, i) => {
    grid.append(el("span", { className: "hm-head" }, String(i)));
    row.forEach((n, j) => {
      const cell = el("span", { className: i === j ? "hm-cell hm-diag" : "hm-cell", title: `true ${i}, said ${j}: ${n}` }, n ? String(n) : "");
      if (i !== j) cell.style.setProperty("--v", (n / max).toFixed(3));
      grid.append(cell);
    });
  });
  return grid;
}

function perClass(rows) {
  const table = el("table", { className: "per-class" });
  table.append(
    el("thead", {}, el("tr", {}, el("th", {}, "digit"), el("th", {}, "precision"), el("th", {}, "recall"))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", {}, String(r.digit)), el("td", {}, pct(r.precision, 2)), el("td", {}, pct(r.recall, 2))))),
  );
  return table;
}

let trainingKey = null;

function showTraining(versions) {
  const key = JSON.stringify(versions.map((v) => [v.ref, v.test_accuracy, v.curves?.epoch.length ?? 0]));
  $("training-empty").hidden = versions.length > 0;
  if (key === trainingKey) return; // manifests rarely change: keep what is drawn
  trainingKey = key;
  for (const id of [...charts.keys()].filter((k) => k.startsWith("curves-"))) {
    charts.get(id).plot.destroy();
    charts.delete(id);
  }
  const cards = [...versions].reverse().map((v, index) => {
    const card = el("article", { className: "card version", dataset: { ref: v.ref } });
    card.append(
      el("div", { className: "card-head" }, el("h3", {}, el("code", {}, v.ref)), el("p", { className: "hint" }, [v.bundled ? "ships with digitrec" : "trained here", v.dry_run ? "dry run" : "", v.created_at.slice(0, 10)].filter(Boolean).join(" · "))),
      el("dl", { className: "figures" },
        el("div", {}, el("dt", {}, "Test accuracy"), el("dd", { className: "test-accuracy" }, pct(v.test_accuracy, 2))),
        el("div", {}, el("dt", {}, "Calibration ECE"), el("dd", {}, pct(v.ece, 2))),
        el("div", {}, el("dt", {}, "Test images"), el("dd", {}, v.test_size ? count(v.test_size) : "–"))),
    );
    const body = el("div", { className: "version-body" });
    if (v.curves) {
      body.append(
        el("div", { className: "chart curves", id: `curves-loss-${index}`, role: "img", ariaLabel: "Loss per epoch, training and validation" }),
        el("div", { className: "chart curves", id: `curves-accuracy-${index}`, role: "img", ariaLabel: "Accuracy per epoch, training and validation" }),
      );
    } else {
      body.append(el("p", { className: "hint" }, "No learning curves were recorded for this version."));
    }
    if (v.confusion_matrix) body.append(heatmap(v.confusion_matrix));
    if (v.per_class.length) body.append(perClass(v.per_class));
    if (v.mistakes.length) body.append(mistakes(v.mistakes));
    card.append(body);
    return [card, v, index];
  });
  $("training").replaceChildren(...cards.map(([card]) => card));
  for (const [, v, index] of cards) {
    if (!v.curves) continue;
    const c = v.curves;
    chart(`curves-loss-${index}`, "curves-loss", (t) => ({
      scales: { x: { time: false } },
      axes: axes(t, null, "loss"),
      series: [{ label: "epoch" }, { label: "train loss", stroke: t.rest, width: 2 }, { label: "val loss", stroke: t.accent, width: 2 }],
      legend: { show: true },
    }), [c.epoch, c.train_loss, c.val_loss]);
    const percent = (xs) => xs.map((x) => (x === null ? null : x * 100));
    chart(`curves-accuracy-${index}`, "curves-accuracy", (t) => ({
      scales: { x: { time: false } },
      axes: axes(t, null, "accuracy %"),
      series: [{ label: "epoch" }, { label: "train %", stroke: t.rest, width: 2 }, { label: "val %", stroke: t.accent, width: 2 }],
      legend: { show: true },
    }), [c.epoch, percent(c.train_accuracy), percent(c.val_accuracy)]);
  }
}

function mistakes(items) {
  const list = el("ul", { className: "shots mistakes", ariaLabel: "Worst test mistakes" });
  list.append(...items.map((m) => el(
    "li",
    { className: "shot wrong", dataset: { index: String(m.index) } },
    el("img", { src: m.image, width: 56, height: 56, alt: `MNIST test image ${m.index}, a ${m.label}, read as ${m.predicted}` }),
    el("span", { className: "shot-said" }, "said ", el("strong", {}, String(m.predicted)), ` ${pct(m.confidence, 0)}`),
    el("span", { className: "shot-truth" }, "true ", el("strong", {}, String(m.label))),
  )));
  return el("div", { className: "mistakes-box" }, el("h4", { className: "subhead" }, "Worst test mistakes"), list);
}

// --- refresh ------------------------------------------------------------------------------

let timer = null;
let inFlight = false;

function showEmpty(stats) {
  const empty = stats.traffic.requests === 0 && stats.traffic.predictions === 0 && stats.corrections.length === 0;
  $("empty").hidden = !empty;
  document.body.classList.toggle("no-traffic", empty);
}

async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const stats = await callApi(ENDPOINTS.stats, { cache: "no-store" });
    showEmpty(stats);
    showTraffic(stats.traffic);
    showDraws(stats.draws);
    showModels(stats.models);
    showCorrections(stats.corrections);
    showTraining(stats.training);
    const at = new Date(stats.generated_at).toLocaleTimeString();
    $("status").textContent = stats.database ? `Updated ${at}.` : `Updated ${at}. No database: only training figures.`;
    $("status").dataset.state = "ok";
    $("main").dataset.generatedAt = stats.generated_at;
  } catch (error) {
    $("status").textContent = error instanceof ApiError ? `The figures could not be read: ${error.message}` : "The server cannot be reached; retrying.";
    $("status").dataset.state = "error";
  } finally {
    $("main").setAttribute("aria-busy", "false");
    inFlight = false;
  }
}

function schedule() {
  clearTimeout(timer);
  timer = null;
  if (document.visibilityState !== "visible") return; // paused while hidden
  timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, REFRESH_MS);
}

document.addEventListener("visibilitychange", async () => {
  if (document.visibilityState === "visible") await refresh();
  schedule();
});

await refresh();
schedule();
