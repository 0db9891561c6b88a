// Sluice demo chat: each turn starts a stream with POST /chat/streams (the message, the model and
// the conversation so far), reads it with EventSource and stops it with DELETE. EventSource
// reconnects by itself after a dropped connection, sending the last event id; the gateway resumes
// right after it, so the reply has no gap and no repeat. Replies are Markdown, rendered by
// markdown.js into DOM nodes: no text from the network is ever parsed as HTML.
"use strict";

const elements = {
  form: document.getElementById("chat"),
  model: document.getElementById("model"),
  message: document.getElementById("message"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  clear: document.getElementById("clear"),
  status: document.getElementById("status"),
  conversation: document.getElementById("conversation"),
  badge: document.getElementById("simulated-badge"),
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

// The turns so far, as the API's `history` takes them: [{role, content}].
let history = [];
// The stream being shown, or null when idle.
let current = null;

function setStatus(state, text) {
  elements.status.dataset.state = state;
  elements.status.textContent = text;
}

function setBusy(busy) {
  elements.send.disabled = busy;
  elements.stop.disabled = !busy;
  elements.clear.disabled = busy;
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
      elements.model.add(new Option(name, name, false, name === body.default));
    }
    setStatus("ready", "Ready");
  } catch (error) {
    setStatus("failed", `Could not load the models: ${error}`);
  }
}

async function showIntegration() {
  try {
    const body = await (await fetch("/health")).json();
    elements.badge.hidden = body.integration !== "simulated";
  } catch {
    elements.badge.hidden = true;
  }
}

function copyButton(message) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(message.text);
      button.textContent = "Copied";
      button.dataset.copied = "true";
    } catch {
      button.textContent = "Copy failed";
    }
  });
  return button;
}

// One message of the conversation: {element, content, label, text}.
function addMessage(role, text, model) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const header = document.createElement("header");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : `Assistant · ${model}`;
  const label = document.createElement("span");
  label.className = "state";
  header.append(who, label);
  const content = document.createElement("div");
  content.className = "content";
  const message = { role, element: article, content, label, text, frame: 0 };
  article.append(header, content);
  if (role === "assistant") article.append(copyButton(message));
  elements.conversation.append(article);
  renderMessage(message);
  return message;
}

function renderMessage(message) {
  message.frame = 0;
  // What you typed shows as typed; replies are Markdown.
  if (message.role === "user") message.content.textContent = message.text;
  else message.content.replaceChildren(SluiceMarkdown.render(message.text));
  message.element.scrollIntoView({ block: "end" });
}

// Render at most once per frame, however many tokens arrive in it.
function scheduleRender(message) {
  if (message.frame === 0) message.frame = requestAnimationFrame(() => renderMessage(message));
}

function setMessageState(message, state, text) {
  message.element.dataset.state = state;
  message.label.textContent = text;
}

function resetStats() {
  elements.ttft.textContent = "–";
  elements.tokens.textContent = "0";
  elements.reconnects.textContent = "0";
  elements.usage.textContent = "–";
}

async function start(event) {
  event.preventDefault();
  if (current !== null) return;
  const text = elements.message.value;
  const model = elements.model.value;
  resetStats();
  setBusy(true);
  setStatus("starting", "Starting…");
  const started = performance.now();
  let body = null;
  let response;
  try {
    response = await fetch("/chat/streams", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ message: text, model, history }),
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
  elements.message.value = "";
  addMessage("user", text);
  const reply = addMessage("assistant", "", model);
  current = follow({ id: body.id, url: body.url, started, prompt: text, reply });
}

function follow(stream) {
  const source = new EventSource(stream.url);
  // shutdown: the text of a draining instance's end while its reconnect is pending.
  Object.assign(stream, { source, tokens: 0, opened: 0, shutdown: null, shutdownErrors: 0 });
  setMessageState(stream.reply, "streaming", "writing…");

  source.addEventListener("open", () => {
    stream.opened += 1;
    stream.shutdown = null;
    stream.shutdownErrors = 0;
    elements.reconnects.textContent = String(stream.opened - 1);
    setStatus("streaming", "Streaming…");
    setMessageState(stream.reply, "streaming", "writing…");
  });
  source.addEventListener("token", (message) => {
    if (stream.tokens === 0) {
      elements.ttft.textContent = `${Math.round(performance.now() - stream.started)} ms`;
    }
    stream.tokens += 1;
    elements.tokens.textContent = String(stream.tokens);
    stream.reply.text += JSON.parse(message.data).content;
    scheduleRender(stream.reply);
  });
  source.addEventListener("done", (message) => {
    const { finish_reason: reason, usage } = JSON.parse(message.data);
    if (usage) {
      elements.usage.textContent =
        `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens`;
    }
    const text = reason === "stop" ? "Finished" : `Finished (${reason})`;
    finish(stream, "done", text, text.toLowerCase());
  });
  source.addEventListener("failed", (message) => {
    const body = JSON.parse(message.data);
    const text = errorMessage(body, "The stream failed.");
    // A draining instance ends its readers so: with Redis the stream goes on elsewhere, so let
    // EventSource reconnect (after the event's retry hint) with the last event's id. A 204 or a
    // refusal then ends the turn with this text (the error listener).
    if (body.error && body.error.code === "server_shutting_down") {
      stream.shutdown = text;
      setStatus("reconnecting", "This Sluice instance is shutting down; resuming…");
      setMessageState(stream.reply, "reconnecting", "resuming…");
      return;
    }
    finish(stream, "failed", text, "failed");
  });
  source.addEventListener("error", () => {
    // CONNECTING: the connection dropped and EventSource retries by itself, resuming after the
    // last event. CLOSED: the gateway said there is nothing more (204) or refused the stream.
    // After a shutdown the first error is that instance closing; two failed reconnects more, none
    // opened, say nothing answers (the instance is gone and none is behind it, not a balancer that
    // sent one reconnect to it late): EventSource would retry for ever, so the turn ends.
    if (stream.shutdown) stream.shutdownErrors += 1;
    if (source.readyState === EventSource.CONNECTING && stream.shutdownErrors < 3) {
      if (!stream.shutdown) {
        setStatus("reconnecting", "Connection lost, resuming…");
        setMessageState(stream.reply, "reconnecting", "connection lost, resuming…");
      }
    } else if (current === stream) {
      finish(stream, "failed", stream.shutdown || "The stream is no longer available.", "failed");
    }
  });
  return stream;
}

// End the shown stream; the turn joins the history when a reply (or part of one) was shown.
function finish(stream, state, text, label) {
  stream.source.close();
  if (current === stream) current = null;
  renderMessage(stream.reply);
  setMessageState(stream.reply, state, label);
  history.push({ role: "user", content: stream.prompt });
  if (stream.reply.text) history.push({ role: "assistant", content: stream.reply.text });
  setBusy(false);
  setStatus(state, text);
}

async function stop() {
  const stream = current;
  if (stream === null) return;
  finish(stream, "stopping", "Stopping…", "stopping…");
  setBusy(true);
  elements.stop.disabled = true;
  try {
    // Answered once the gateway has closed the upstream request.
    // The stream's URL: with gateway keys on it carries the stream's token.
    await fetch(stream.url, { method: "DELETE" });
    setStatus("stopped", "Stopped by you");
    setMessageState(stream.reply, "stopped", "stopped by you");
  } catch (error) {
    setStatus("failed", `Could not stop the stream: ${error}`);
  } finally {
    setBusy(false);
  }
}

function clearConversation() {
  if (current !== null) return;
  history = [];
  elements.conversation.replaceChildren();
  resetStats();
  setStatus("ready", "Ready");
}

elements.form.addEventListener("submit", start);
elements.stop.addEventListener("click", stop);
elements.clear.addEventListener("click", clearConversation);
elements.key.addEventListener("change", loadModels);
elements.message.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter makes a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    elements.form.requestSubmit();
  }
});
loadModels();
showIntegration();
