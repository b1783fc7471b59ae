// The admin dashboard. Everything it shows comes from the inspection API, relative to
// this page (served at <prefix>/, so "stats" is <prefix>/stats):
//
// - the streams in flight, live from the events feed (streams/events: a snapshot, then
//   opened / admitted / closed), read with fetch so that the token can go in the
//   Authorization header (EventSource cannot send one); never polled. The feed says
//   when a stream opens, is admitted and closes, not each item: the rows on screen get
//   their phase, items and bytes from streams/{id} every 2 s (at most MAX_REFRESHED);
// - counters and limits from stats every 2 s; recent closes from history once, then
//   from the feed's closed events; in cluster mode the cluster view from
//   cluster/stats and cluster/streams every 2 s (there is no cluster feed).
//
// The token is kept in this tab's sessionStorage only, never in a URL. Every value is
// written with textContent: keys, labels and reasons are the clients' own text.

import { readEvents } from "./sse.js";
import { VirtualTable } from "./table.js";

const TOKEN_KEY = "streammgr.admin.token";
const POLL_MS = 2000;
const CHART_SECONDS = 300;
const MAX_CLOSES = 50;
const MAX_REFRESHED = 30;
const MAX_CLUSTER_PAGES = 10;
const WAITING = "waiting";
// The feed's snapshot is one event holding every stream in flight (some 450 characters
// each): room for about 35,000, and still a bound (sse.js's default, 1 Mi, is too small).
const MAX_FEED_EVENT = 16 * 1024 * 1024;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  running: false,
  feed: null,            // the AbortController of the feed's fetch
  timers: [],
  streams: new Map(),    // id -> stream (as the API sends it, plus seen: when)
  closes: [],            // newest first
  stats: null,
  limitsEdited: false,
  eventsThisSecond: 0,
  chart: null,
  series: [[], [], []],
  renderQueued: false,
  closesChanged: false,
  snapshotSeen: false,
  firstRender: null,     // ms since navigation, when the first snapshot was drawn
  pendingSince: null,    // when the oldest change not yet drawn arrived
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", json, signal, accept } = {}) {
  const headers = new Headers();
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  if (accept) headers.set("Accept", accept);
  let body;
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", `the server could not be reached (${error.message})`);
  }
  if (!response.ok) {
    let code = "http_error";
    let message = `${method} ${path}: HTTP ${response.status}`;
    try {
      const answer = await response.json();
      if (answer && answer.error) {
        code = answer.error.code || code;
        message = answer.error.message || message;
      }
    } catch {
      // not JSON: the status says it
    }
    const error = new ApiError(response.status, code, message);
    if (response.status === 401) unauthorized();
    throw error;
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// -- Authentication -----------------------------------------------------------------

function showMessage(text) {
  const message = $("message");
  message.textContent = text;
  message.hidden = !text;
}

function stop() {
  state.running = false;
  if (state.feed) state.feed.abort();
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
}

function unauthorized() {
  const hadToken = Boolean(state.token);
  stop();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  // Nothing of what was shown stays on screen.
  state.streams.clear();
  state.closes = [];
  $("dashboard").hidden = true;
  table.clear();
  clusterTable.clear();
  $("history").replaceChildren();
  $("keys").replaceChildren();
  $("forget-token").hidden = true;
  setStatus("error", "no access");
  showMessage(
    hadToken
      ? "The admin token was refused (401 unauthorized): it is not the token this server " +
          "was started with (--admin-token). Enter the right one."
      : "This server's admin API needs a token: enter the one it was started with (--admin-token).",
  );
  $("login").hidden = false;
  $("token").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  start();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// -- The stream tables --------------------------------------------------------------

function ageOf(stream, now) {
  if (stream.phase === "closed") return stream.age;
  return stream.age + (now - stream.seen) / 1000;
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([name, value]) => `${name}=${value}`).join(" ");
}

function rateText(stream, age) {
  // Items per second since the stream started delivering (its lifetime's average).
  if (!stream.items || age <= 0) return "";
  return `${(stream.items / age).toFixed(1)}/s`;
}

function streamCells(stream) {
  const age = ageOf(stream, performance.now());
  return [
    stream.key,
    labelsText(stream.labels),
    stream.phase,
    formatSeconds(age),
    String(stream.items),
    formatBytes(stream.bytes),
    rateText(stream, age),
  ];
}

function clusterCells(stream) {
  return [stream.instance, ...streamCells(stream)];
}

async function cancelStream(stream) {
  const reason = $("reason").value.trim();
  try {
    await api(`streams/${encodeURIComponent(stream.id)}`, {
      method: "DELETE",
      json: reason ? { reason } : {},
    });
    result("action-result", true, `cancelled stream ${stream.id} (${stream.key})`);
  } catch (error) {
    result("action-result", false, error.message);
  }
}

const table = new VirtualTable(
  $("streams"),
  ["key", "labels", "phase", "age", "items", "bytes", "rate"],
  streamCells,
  cancelStream,
);
const clusterTable = new VirtualTable(
  $("cluster-streams"),
  ["instance", "key", "labels", "phase", "age", "items", "bytes", "rate"],
  clusterCells,
  cancelStream,
);

function filtered() {
  const wanted = $("filter").value.trim().toLowerCase();
  const rows = [];
  for (const stream of state.streams.values()) {
    if (
      !wanted ||
      stream.key.toLowerCase().includes(wanted) ||
      stream.phase.includes(wanted) ||
      labelsText(stream.labels).toLowerCase().includes(wanted)
    ) {
      rows.push(stream);
    }
  }
  return rows;
}

function queueRender() {
  if (state.pendingSince === null) state.pendingSince = performance.now();
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  state.renderQueued = false;
  if (!state.running) return;
  const rows = filtered();
  table.setRows(rows);
  $("row-count").textContent = `(${rows.length} of ${state.streams.size})`;
  if (state.closesChanged) renderCloses();
  const container = $("streams");
  if (state.firstRender === null && state.snapshotSeen) {
    state.firstRender = performance.now();
    container.dataset.firstRenderMs = state.firstRender.toFixed(1);
  }
  if (state.pendingSince !== null) {
    // From the arrival of the oldest change to this frame's end of drawing.
    container.dataset.lastApplyMs = (performance.now() - state.pendingSince).toFixed(2);
    container.dataset.applied = String(Number(container.dataset.applied || 0) + 1);
    state.pendingSince = null;
  }
}

$("filter").addEventListener("input", queueRender);

// -- The events feed ----------------------------------------------------------------

function onFeedEvent(event) {
  if (state.pendingSince === null) state.pendingSince = performance.now();
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  const now = performance.now();
  switch (event.event) {
    case "snapshot":
      state.streams.clear();
      for (const stream of data.streams) {
        stream.seen = now;
        state.streams.set(stream.id, stream);
      }
      state.snapshotSeen = true;
      break;
    case "opened":
    case "admitted":
      data.seen = now;
      state.streams.set(data.id, data);
      state.eventsThisSecond++;
      break;
    case "closed":
      state.streams.delete(data.id);
      state.closes.unshift(data);
      if (state.closes.length > MAX_CLOSES) state.closes.length = MAX_CLOSES;
      state.closesChanged = true;
      state.eventsThisSecond++;
      break;
    case "end":
      setStatus("error", "the manager has closed");
      break;
    default:
      return;
  }
  queueRender();
}

function setStatus(kind, text) {
  const status = $("feed-status");
  status.dataset.state = kind;
  status.textContent = text;
}

async function runFeed() {
  let delay = 500;
  while (state.running) {
    const controller = new AbortController();
    state.feed = controller;
    try {
      setStatus("connecting", "connecting…");
      const response = await api("streams/events", {
        signal: controller.signal,
        accept: "text/event-stream",
      });
      setStatus("live", "live");
      delay = 500;
      await readEvents(response, onFeedEvent, { maxEventSize: MAX_FEED_EVENT });
      if (state.running) setStatus("error", "the feed ended; reconnecting");
    } catch (error) {
      if (!state.running || error.status === 401) return;
      setStatus("error", `feed: ${error.message}; reconnecting`);
    }
    // Back off before reconnecting (not a poll: the feed is held open while it lives).
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// The rows on screen: their items and bytes (the feed does not carry each item).
async function refreshVisible() {
  const rows = table.visibleRows().filter((row) => row && row.phase !== WAITING);
  const now = performance.now();
  const queue = rows.slice(0, MAX_REFRESHED);
  const worker = async () => {
    for (let row = queue.shift(); row !== undefined; row = queue.shift()) {
      try {
        const fresh = await apiJson(`streams/${encodeURIComponent(row.id)}`);
        const known = state.streams.get(fresh.id);
        if (known !== undefined && fresh.phase !== "closed") {
          known.phase = fresh.phase; // the feed tells admissions, not the first item
          known.items = fresh.items;
          known.bytes = fresh.bytes;
          known.age = fresh.age;
          known.seen = now;
        }
      } catch {
        // closed meanwhile: the feed says so
      }
    }
  };
  // Two at a time: with the feed, the stats and the cluster poll, one of the browser's
  // 6 HTTP/1.1 connections to this host stays free for the operator's actions.
  await Promise.all([worker(), worker()]);
  table.render();
}

// -- Counters, limits, keys ---------------------------------------------------------

function limitText(value) {
  return value === null || value === undefined ? "none" : String(value);
}

function meter(value, max) {
  const element = document.createElement("meter");
  element.min = 0;
  element.max = max || 1;
  element.value = max ? Math.min(value, max) : 0;
  return element;
}

function renderStats(stats) {
  state.stats = stats;
  $("stat-active").textContent = String(stats.active);
  $("stat-waiting").textContent = String(stats.waiting);
  $("stat-opened").textContent = String(stats.opened_total);
  $("stat-closed").textContent = String(stats.closed_total);
  $("stat-rejected").textContent = String(stats.rejected_total);
  const global = $("usage-global");
  global.max = stats.max_streams || 1;
  global.value = stats.max_streams ? Math.min(stats.active, stats.max_streams) : 0;
  $("usage-global-text").textContent =
    `${stats.active} active of ${limitText(stats.max_streams)}, ` +
    `${stats.waiting} waiting of ${limitText(stats.max_waiting)}`;
  if (!state.limitsEdited) {
    for (const name of ["max_streams", "max_streams_per_key", "max_waiting"]) {
      const input = $(`limit-${name}`);
      if (document.activeElement !== input) input.value = stats[name] ?? "";
    }
  }
  const keys = new Set([...Object.keys(stats.active_by_key), ...Object.keys(stats.waiting_by_key)]);
  const ranked = [...keys]
    .map((key) => [key, stats.active_by_key[key] || 0, stats.waiting_by_key[key] || 0])
    .sort((a, b) => b[1] - a[1] || b[2] - a[2])
    .slice(0, 20);
  const body = $("keys");
  body.replaceChildren(
    ...ranked.map(([key, active, waiting]) => {
      const row = document.createElement("tr");
      for (const text of [key, String(active), String(waiting)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        cell.title = text;
        row.append(cell);
      }
      const usage = document.createElement("td");
      usage.append(
        meter(active, stats.max_streams_per_key),
        ` ${active} of ${limitText(stats.max_streams_per_key)}`,
      );
      row.append(usage);
      return row;
    }),
  );
}

async function pollStats() {
  try {
    renderStats(await apiJson("stats"));
  } catch (error) {
    if (error.status !== 401) setStatus("error", `stats: ${error.message}`);
  }
}

for (const name of ["max_streams", "max_streams_per_key", "max_waiting"]) {
  $(`limit-${name}`).addEventListener("input", () => {
    state.limitsEdited = true;
  });
}

$("limits").addEventListener("submit", async (event) => {
  event.preventDefault();
  const update = {};
  for (const name of ["max_streams", "max_streams_per_key", "max_waiting"]) {
    const text = $(`limit-${name}`).value.trim();
    update[name] = text === "" ? null : Number(text);
  }
  try {
    const limits = await apiJson("limits", { method: "PUT", json: update });
    state.limitsEdited = false;
    result(
      "limits-result",
      true,
      `applied: max_streams ${limitText(limits.max_streams)}, max_streams_per_key ` +
        `${limitText(limits.max_streams_per_key)}, max_waiting ${limitText(limits.max_waiting)}`,
    );
    pollStats();
  } catch (error) {
    result("limits-result", false, error.message);
  }
});

$("cancel-key").addEventListener("click", async () => {
  const key = $("cancel-key-name").value;
  const reason = $("reason").value.trim();
  if (!key) {
    result("action-result", false, "enter the key whose streams to cancel");
    return;
  }
  try {
    const answer = await apiJson(`keys/${encodeURIComponent(key)}/streams`, {
      method: "DELETE",
      json: reason ? { reason } : {},
    });
    result("action-result", true, `cancelled ${answer.cancelled} stream(s) of key ${answer.key}`);
  } catch (error) {
    result("action-result", false, error.message);
  }
});

function result(id, ok, text) {
  const element = $(id);
  element.dataset.ok = String(ok);
  element.textContent = text;
}

// -- Recent closes ------------------------------------------------------------------

function renderCloses() {
  state.closesChanged = false;
  $("history").replaceChildren(
    ...state.closes.map((stream) => {
      const row = document.createElement("tr");
      const closed = new Date((stream.created_wall + stream.age) * 1000);
      const texts = [
        closed.toLocaleTimeString(),
        stream.key,
        stream.close_reason || "",
        stream.detail || "",
        String(stream.items),
        formatBytes(stream.bytes),
        formatSeconds(stream.age),
        stream.error || "",
      ];
      for (const text of texts) {
        const cell = document.createElement("td");
        cell.textContent = text;
        cell.title = text;
        row.append(cell);
      }
      row.dataset.id = stream.id;
      return row;
    }),
  );
}

async function loadHistory() {
  try {
    const history = await apiJson(`history?limit=${MAX_CLOSES}`);
    const known = new Set(state.closes.map((stream) => stream.id));
    state.closes = [...state.closes, ...history.streams.filter((s) => !known.has(s.id))].slice(0, MAX_CLOSES);
    state.closesChanged = true;
    queueRender();
  } catch {
    // shown by the status already
  }
}

// -- The chart ----------------------------------------------------------------------

function setUpChart() {
  if (typeof uPlot === "undefined") return;
  const element = $("chart");
  state.chart = new uPlot(
    {
      width: Math.max(300, element.clientWidth || 500),
      height: 200,
      scales: { x: { time: true }, streams: { auto: true }, events: { auto: true } },
      series: [
        {},
        { label: "active streams", scale: "streams", stroke: "#2a6fdb", width: 2 },
        { label: "events/s", scale: "events", stroke: "#d9822b", width: 1 },
      ],
      axes: [{}, { scale: "streams" }, { scale: "events", side: 1, grid: { show: false } }],
    },
    state.series,
    element,
  );
}

function tickChart() {
  let active = 0;
  for (const stream of state.streams.values()) if (stream.phase !== WAITING) active++;
  const rate = state.eventsThisSecond;
  state.eventsThisSecond = 0;
  $("stat-rate").textContent = String(rate);
  const [times, actives, rates] = state.series;
  times.push(Date.now() / 1000);
  actives.push(active);
  rates.push(rate);
  if (times.length > CHART_SECONDS) {
    times.shift();
    actives.shift();
    rates.shift();
  }
  if (state.chart) state.chart.setData(state.series);
  table.render(); // the ages move on
}

// -- Cluster mode -------------------------------------------------------------------

async function pollCluster() {
  try {
    const stats = await apiJson("cluster/stats");
    $("instances").replaceChildren(
      ...stats.instances.map((instance) => {
        const row = document.createElement("tr");
        const texts = [
          instance.instance,
          String(instance.active),
          String(instance.waiting),
          limitText(instance.max_streams),
          `${instance.seen_ago.toFixed(1)}s ago`,
        ];
        for (const text of texts) {
          const cell = document.createElement("td");
          cell.textContent = text;
          row.append(cell);
        }
        return row;
      }),
    );
    const streams = [];
    let cursor = null;
    for (let page = 0; page < MAX_CLUSTER_PAGES; page++) {
      const query = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
      const answer = await apiJson(`cluster/streams?limit=1000${query}`);
      const seen = performance.now();
      for (const stream of answer.streams) {
        stream.seen = seen;
        streams.push(stream);
      }
      cursor = answer.next_cursor;
      if (!cursor) break;
    }
    $("cluster-count").textContent = `(${streams.length} streams on ${stats.instances.length} instances)`;
    clusterTable.setRows(streams);
  } catch (error) {
    if (error.status !== 401) setStatus("error", `cluster: ${error.message}`);
  }
}

async function detectCluster() {
  try {
    await api("cluster/stats");
  } catch {
    return; // 404 cluster_off: a single instance
  }
  $("cluster-panel").hidden = false;
  pollCluster();
  state.timers.push(setInterval(pollCluster, POLL_MS));
}

// -- Start --------------------------------------------------------------------------

async function start() {
  showMessage("");
  let stats;
  try {
    stats = await apiJson("stats");
  } catch (error) {
    if (error.status !== 401) {
      setStatus("error", "no access");
      showMessage(`The admin API answered: ${error.message}`);
    }
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("forget-token").hidden = !state.token;
  state.running = true;
  runFeed(); // first: the snapshot is on its way while the rest is set up
  loadHistory();
  detectCluster();
  renderStats(stats);
  if (state.chart === null) setUpChart();
  state.timers.push(setInterval(pollStats, POLL_MS));
  state.timers.push(setInterval(refreshVisible, POLL_MS));
  state.timers.push(setInterval(tickChart, 1000));
}

start();
