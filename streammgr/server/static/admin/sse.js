// Server-Sent Events over fetch: EventSource cannot send an Authorization header.
//
// SSEParser is sans-IO, as streammgr/sse/ is: feed() takes decoded text in any
// chunking (a line, or its CR LF, may be cut anywhere) and returns the events it
// completed; the unfinished line is kept, bounded. readEvents() drives it from a
// fetch Response, decoding UTF-8 with {stream: true} so a character cut between two
// chunks is whole.

/** The longest line kept while unfinished (characters); longer ends the feed. */
export const MAX_LINE = 16 * 1024 * 1024;

export class SSEParser {
  constructor() {
    this.pending = "";      // the unfinished line
    this.afterCR = false;   // the last chunk ended with CR: a LF first in the next is its pair
    this.data = [];
    this.event = "";
    this.lastId = "";
  }

  /** The events completed by `text` (objects {event, data, id}). */
  feed(text) {
    const events = [];
    let start = 0;
    if (this.afterCR && text.length > 0) {
      this.afterCR = false;
      if (text.charCodeAt(0) === 10) start = 1;
    }
    for (let index = start; index < text.length; index++) {
      const code = text.charCodeAt(index);
      if (code !== 10 && code !== 13) continue;
      const line = this.pending + text.slice(start, index);
      this.pending = "";
      this._line(line, events);
      if (code === 13) {
        if (index + 1 === text.length) this.afterCR = true;
        else if (text.charCodeAt(index + 1) === 10) index++;
      }
      start = index + 1;
    }
    if (start < text.length) {
      this.pending += text.slice(start);
      if (this.pending.length > MAX_LINE) {
        throw new Error(`an event stream line is longer than ${MAX_LINE} characters`);
      }
    }
    return events;
  }

  _line(line, events) {
    if (line === "") {
      if (this.data.length > 0) {
        events.push({ event: this.event || "message", data: this.data.join("\n"), id: this.lastId });
      }
      this.data = [];
      this.event = "";
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" a comment (the keep-alives)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
  }
}

/**
 * Read `response`'s body as events, calling onEvent(event) for each, until it ends
 * (resolves) or fails (rejects). An unfinished event at the end is dropped, as the
 * specification says.
 */
export async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.feed(decoder.decode(value, { stream: true }))) onEvent(event);
    }
    for (const event of parser.feed(decoder.decode())) onEvent(event);
  } finally {
    reader.releaseLock();
  }
}
