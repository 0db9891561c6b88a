// Sluice demo page: start a stream with POST /chat/streams, read it with EventSource, stop it
// with DELETE. EventSource reconnects by itself after a dropped connection, sending the last
// event id; the gateway resumes right after it, so the reply has no gap and no repeat.
"use strict";

const elements = {
  form: document.getElementById("chat"),
  model: document.getElementById("model"),
  message: document.getElementById("message"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  status: document.getElementById("status"),
  reply: document.getElementById("reply"),
  ttft: document.getElementById("ttft"),
  tokens: document.getElementById("tokens"),
  reconnects: document.getElementById("reconnects"),
  usage: document.getElementById("usage"),
  keyField: document.getElementById("key-field"),
  key: document.getElementById("key"),
};

// With gateway keys on, calls carry the key typed here; EventSource URLs carry a token instead.
function authHeaders() {
  const key = elements.key.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The stream being shown, or null when idle.
let current = null;

function setStatus(state, text) {
  elements.status.dataset.state = state;
  elements.status.textContent = text;
}

function setBusy(busy) {
  elements.send.disabled = busy;
  elements.stop.disabled = !busy;
}

function errorMessage(body, fallback) {
  return (body && body.error && body.error.message) || fallback;
}

async function loadModels() {
  try {
    const response = await fetch("/models", { headers: authHeaders() });
    if (response.status === 401) {
      elements.keyField.hidden = false;
      setStatus("idle", "This gateway needs a key.");
      return;
    }
    const body = await response.json();
    elements.model.replaceChildren();
    for (const name of body.models) {
      const option = new Option(name, name, false, name === body.default);
      elements.model.add(option);
    }
    setStatus("ready", "Ready");
  } catch (error) {
    setStatus("failed", `Could not load the models: ${error}`);
  }
}

function resetReply() {
  elements.reply.replaceChildren();
  elements.ttft.textContent = "–";
  elements.tokens.textContent = "0";
  elements.reconnects.textContent = "0";
  elements.usage.textContent = "–";
}

async function start(event) {
  event.preventDefault();
  if (current !== null) return;
  resetReply();
  setBusy(true);
  setStatus("starting", "Starting…");
  const started = performance.now();
  let body = null;
  let response;
  try {
    response = await fetch("/chat/streams", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ message: elements.message.value, model: elements.model.value }),
    });
    body = await response.json();
  } catch (error) {
    setBusy(false);
    setStatus("failed", `Could not start: ${error}`);
    return;
  }
  if (response.status !== 201) {
    setBusy(false);
    setStatus("failed", errorMessage(body, `Could not start (HTTP ${response.status}).`));
    return;
  }
  current = follow(body.id, body.url, started);
}

function follow(id, url, started) {
  const text = document.createTextNode("");
  elements.reply.append(text);
  const stream = { id, url, source: new EventSource(url), tokens: 0, opened: 0 };
  const { source } = stream;

  source.addEventListener("open", () => {
    stream.opened += 1;
    elements.reconnects.textContent = String(stream.opened - 1);
    setStatus("streaming", "Streaming…");
  });
  source.addEventListener("token", (message) => {
    if (stream.tokens === 0) {
      elements.ttft.textContent = `${Math.round(performance.now() - started)} ms`;
    }
    stream.tokens += 1;
    elements.tokens.textContent = String(stream.tokens);
    text.appendData(JSON.parse(message.data).content);
  });
  source.addEventListener("done", (message) => {
    const { finish_reason: reason, usage } = JSON.parse(message.data);
    if (usage) {
      elements.usage.textContent =
        `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens`;
    }
    finish(stream, "done", `Done (${reason})`);
  });
  source.addEventListener("failed", (message) => {
    finish(stream, "failed", errorMessage(JSON.parse(message.data), "The stream failed."));
  });
  source.addEventListener("error", () => {
    // CONNECTING: the connection dropped and EventSource retries by itself, resuming after the
    // last event. CLOSED: the gateway said there is nothing more (204) or refused the stream.
    if (source.readyState === EventSource.CONNECTING) {
      setStatus("reconnecting", "Connection lost; reconnecting…");
    } else if (current === stream) {
      finish(stream, "failed", "The stream is no longer available.");
    }
  });
  return stream;
}

function finish(stream, state, text) {
  stream.source.close();
  if (current === stream) current = null;
  setBusy(false);
  setStatus(state, text);
}

async function stop() {
  const stream = current;
  if (stream === null) return;
  finish(stream, "stopping", "Stopping…");
  elements.send.disabled = true;
  try {
    // Answered once the gateway has closed the upstream request.
    // The stream's URL: with gateway keys on it carries the stream's token.
    await fetch(stream.url, { method: "DELETE" });
    setStatus("stopped", "Stopped");
  } catch (error) {
    setStatus("failed", `Could not stop the stream: ${error}`);
  } finally {
    elements.send.disabled = false;
  }
}

elements.form.addEventListener("submit", start);
elements.stop.addEventListener("click", stop);
elements.key.addEventListener("change", loadModels);
loadModels();
