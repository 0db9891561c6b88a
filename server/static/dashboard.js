// Sluice live dashboard: one EventSource on /dashboard/feed, a `snapshot` event every second.
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

function connect() {
  const source = new EventSource("/dashboard/feed");
  let updates = 0;
  source.addEventListener("snapshot", (message) => {
    updates += 1;
    render(JSON.parse(message.data));
    setFeed("live", "Live");
    document.body.dataset.updates = String(updates);
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so until the next snapshot arrives.
    setFeed("lost", source.readyState === EventSource.CLOSED ? "Disconnected" : "Connection lost; reconnecting…");
  });
}

connect();
