// A small Server-Sent Events parser (the WHATWG "event stream" rules the dashboard needs), for
// reading a feed with fetch(), which, unlike EventSource, can send an Authorization header.
// Feed it decoded text in any pieces; it returns the complete events each piece finished.
"use strict";

class SseParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.retry = null; // the last `retry:` the stream sent, in ms
  }

  push(text) {
    this.buffer += text;
    const events = [];
    // A line ends at CRLF, LF or CR; a CR at the very end may be half of a CRLF still on its way.
    let match;
    const line = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    while ((match = line.exec(this.buffer)) !== null) {
      const event = this.line(this.buffer.slice(start, match.index));
      if (event) events.push(event);
      start = match.index + match[0].length;
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  line(text) {
    if (text === "") return this.dispatch();
    if (text.startsWith(":")) return null; // a comment (heartbeat)
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }

  dispatch() {
    const event = this.data.length ? { type: this.event || "message", data: this.data.join("\n") } : null;
    this.data = [];
    this.event = "";
    return event;
  }
}

if (typeof module !== "undefined") module.exports = { SseParser };
