// Sluice live dashboard: /dashboard/feed read with fetch() (so it can carry the metrics key) and
// parsed by sse.js, a `snapshot` event every second; reconnects with backoff when it drops.
// Every value is written with textContent and every element built with createElement, so nothing
// the feed carries is ever parsed as HTML.
"use strict";

const HISTORY = 60; // points kept for each sparkline
const history = { requests: [], tokens: [] };

function byId(id) {
  return document.getElementById(id);
}

function setFeed(state, text) {
  const feed = byId("feed");
  feed.dataset.state = state;
  feed.textContent = text;
}

function formatNumber(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function formatMs(value) {
  return value === null || value === undefined ? "–" : `${formatNumber(value, value < 10 ? 1 : 0)} ms`;
}

function renderCounts(id, counts) {
  const list = byId(id);
  const entries = Object.entries(counts);
  const nodes = [];
  if (entries.length === 0) {
    const none = document.createElement("dd");
    none.className = "none";
    none.textContent = "none";
    nodes.push(none);
  }
  for (const [name, count] of entries) {
    const term = document.createElement("dt");
    term.textContent = name;
    const value = document.createElement("dd");
    value.textContent = formatNumber(count, 0);
    nodes.push(term, value);
  }
  list.replaceChildren(...nodes);
}

function renderSpark(id, points) {
  const svg = byId(id);
  const max = Math.max(1, ...points);
  const step = points.length > 1 ? 120 / (HISTORY - 1) : 0;
  const offset = 120 - step * (points.length - 1);
  const coordinates = points.map((value, index) => {
    const x = offset + index * step;
    const y = 29 - (value / max) * 27;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coordinates.join(" "));
  svg.replaceChildren(line);
}

function remember(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function renderTables(tables) {
  const container = byId("tables");
  const nodes = tables.map((table) => {
    const article = document.createElement("article");
    article.id = `table-${table.id}`;
    const heading = document.createElement("h2");
    heading.textContent = table.title;
    const element = document.createElement("table");
    const head = element.createTHead().insertRow();
    for (const column of table.columns) {
      const cell = document.createElement("th");
      cell.scope = "col";
      cell.textContent = column;
      head.append(cell);
    }
    const body = element.createTBody();
    for (const row of table.rows) {
      const line = body.insertRow();
      row.forEach((value, index) => {
        const cell = line.insertCell();
        cell.textContent = value === null ? "–" : String(value);
        if (table.columns[index] === "state") cell.dataset.state = String(value);
      });
    }
    article.append(heading, element);
    return article;
  });
  container.replaceChildren(...nodes);
}

function render(snapshot) {
  byId("live-streams").textContent = formatNumber(snapshot.live_streams, 0);
  byId("requests-per-second").textContent = formatNumber(snapshot.requests_per_second, 1);
  byId("tokens-per-second").textContent = formatNumber(snapshot.tokens_per_second, 0);
  byId("ttft-p50").textContent = formatMs(snapshot.ttft_ms.p50);
  byId("ttft-p99").textContent = formatMs(snapshot.ttft_ms.p99);
  byId("requests-total").textContent = formatNumber(snapshot.requests_total, 0);
  byId("disconnects").textContent = formatNumber(snapshot.disconnects, 0);
  byId("window").textContent = formatNumber(snapshot.window_seconds, 0);
  renderCounts("errors-by-code", snapshot.errors_by_code);
  renderCounts("errors-by-status", snapshot.errors_by_status);
  renderCounts("endings", snapshot.endings);
  remember(history.requests, snapshot.requests_per_second);
  remember(history.tokens, snapshot.tokens_per_second);
  renderSpark("requests-spark", history.requests);
  renderSpark("tokens-spark", history.tokens);
  renderTables(snapshot.tables);
}

// Reconnect after a lost feed: the server's `retry:` hint (or 1 s), doubling up to MAX_DELAY_MS.
const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 8000;
// The metrics key lives in this tab's sessionStorage only: never in the URL, gone with the tab.
const KEY_STORE = "sluice-metrics-key";

const keyForm = byId("key-form");
const keyInput = byId("metrics-key");
const keyMessage = byId("key-message");
let key = sessionStorage.getItem(KEY_STORE) || "";
let updates = 0;
let current = null; // the AbortController of the feed being read

function askForKey(message) {
  keyForm.hidden = false;
  keyMessage.textContent = message;
  keyInput.focus();
}

// Read the feed once: "denied" on 401, "ended" when it closes; throws when the connection drops.
async function readFeed(signal, onRetry) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch("/dashboard/feed", { headers, signal, cache: "no-store" });
  if (response.status === 401) return "denied";
  if (!response.ok || !response.body) throw new Error(`feed answered ${response.status}`);
  if (key) sessionStorage.setItem(KEY_STORE, key);
  keyForm.hidden = true;
  const parser = new SseParser();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "ended";
    for (const event of parser.push(value)) {
      if (event.type !== "snapshot") continue;
      updates += 1;
      render(JSON.parse(event.data));
      setFeed("live", "Live");
      document.body.dataset.updates = String(updates);
      onRetry(parser.retry);
    }
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function follow(controller) {
  let delay = FIRST_DELAY_MS;
  let base = FIRST_DELAY_MS;
  while (!controller.signal.aborted) {
    let outcome;
    try {
      outcome = await readFeed(controller.signal, (retry) => {
        base = retry || FIRST_DELAY_MS;
        delay = base; // a snapshot arrived: the next drop starts the backoff over
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      outcome = "lost";
    }
    if (outcome === "denied") {
      sessionStorage.removeItem(KEY_STORE);
      setFeed("locked", key ? "Metrics key refused" : "Needs the metrics key");
      askForKey(key ? "The gateway refused that metrics key; check it and try again." : "This dashboard needs the gateway's metrics key.");
      return;
    }
    setFeed("lost", "Connection lost; reconnecting…");
    await pause(delay, controller.signal);
    delay = Math.min(delay * 2, MAX_DELAY_MS);
  }
}

function connect() {
  if (current) current.abort();
  current = new AbortController();
  setFeed("connecting", "Connecting…");
  follow(current);
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  key = keyInput.value.trim();
  keyInput.value = "";
  keyMessage.textContent = "";
  connect();
});

connect();
