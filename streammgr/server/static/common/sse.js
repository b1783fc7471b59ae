// Server-Sent Events for a fetch() body (WHATWG HTML 9.2.5-9.2.6): the browser twin of
// streammgr.sse.SSEParser, and the one parser of both pages (the admin dashboard and
// the chat page each serve this file as ./sse.js; EventSource cannot send an
// Authorization header nor a POST body, so they read the body with fetch).
//
// SSEParser is sans-IO: feed(bytes) returns the events that chunk completed, close()
// those the end completes. What a chunk leaves unfinished carries over to the next: a
// line cut anywhere, a CR whose LF comes in the next chunk, a UTF-8 character split
// between chunks (TextDecoder in streaming mode; invalid bytes become U+FFFD), a BOM
// cut in two (dropped once, at the start). The unfinished line and the data of one
// event are bounded. readEvents() drives a parser from a fetch Response.
// No DOM, no I/O in the parser: tests feed it every chunking of a stream.

const DIGITS = /^[0-9]+$/;

/** The default bound on a line and on the data of one event (UTF-16 code units). */
export const MAX_EVENT_SIZE = 1 << 20;

/**
 * One event, as streammgr.sse.ServerSentEvent: {event, data, id, retry}.
 * @typedef {{event: string, data: string, id: string, retry: number | null}} ServerSentEvent
 */

export class SSEParser {
  #maxEventSize;
  #decoder = new TextDecoder("utf-8"); // drops a leading BOM, once
  #line = ""; // the unfinished line
  #skipLF = false; // the last chunk ended with CR: a LF first in the next ends the same line
  #data = "";
  #event = "";
  #idBuffer = "";
  #eventRetry = null; // the retry field of the event being built
  #lastEventId = "";
  #retry = null;
  #broken = null; // the error that ended the stream: the parser stays stopped

  /**
   * @param {{maxEventSize?: number}} [options] maxEventSize: the longest line, and the
   *   longest data of one event, held while they arrive (UTF-16 code units); longer
   *   throws, instead of growing without bound.
   */
  constructor({ maxEventSize = MAX_EVENT_SIZE } = {}) {
    if (!Number.isSafeInteger(maxEventSize) || maxEventSize <= 0) {
      throw new RangeError(`maxEventSize must be a positive integer, got ${maxEventSize}`);
    }
    this.#maxEventSize = maxEventSize;
  }

  /** The last event ID (the id of the last event dispatched, or of a blank line). */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** The last valid retry field (milliseconds), or null. */
  get retry() {
    return this.#retry;
  }

  /**
   * The events a chunk of the body completed.
   * @param {Uint8Array} bytes
   * @returns {ServerSentEvent[]}
   */
  feed(bytes) {
    this.#check();
    return this.#text(this.#decoder.decode(bytes, { stream: true }));
  }

  /**
   * The body ended: what the decoder held, and nothing more: an event without its
   * blank line is dropped, as the specification says.
   * @returns {ServerSentEvent[]}
   */
  close() {
    this.#check();
    const events = this.#text(this.#decoder.decode());
    this.#line = "";
    this.#skipLF = false;
    this.#data = "";
    this.#event = "";
    this.#eventRetry = null;
    return events;
  }

  #check() {
    if (this.#broken !== null) {
      throw new Error(`the event stream was already refused: ${this.#broken.message}`);
    }
  }

  #tooLarge(what, size) {
    this.#broken = new Error(
      `${what} of ${size} characters is longer than maxEventSize=${this.#maxEventSize}: ` +
        "not an event stream? raise maxEventSize if the server sends events this large",
    );
    throw this.#broken;
  }

  #text(text) {
    const events = [];
    const length = text.length;
    let start = 0;
    if (this.#skipLF && length > 0) {
      this.#skipLF = false;
      if (text.charCodeAt(0) === 10) start = 1;
    }
    // Only the new text is scanned: a long line arriving in many chunks costs linear time
    // (a 4.5 MB snapshot line in 16 KiB chunks, Node 20: 20-30 ms, against 850-1000 ms
    // when each chunk rescanned the whole unfinished line; token events: the same).
    let cr = text.indexOf("\r", start);
    let lf = text.indexOf("\n", start);
    while (cr !== -1 || lf !== -1) {
      let end;
      let next;
      if (lf === -1 || (cr !== -1 && cr < lf)) {
        end = cr;
        if (cr + 1 === length) {
          this.#skipLF = true; // its LF, if any, is in the next chunk
          next = length;
        } else {
          next = text.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
        }
      } else {
        end = lf;
        next = lf + 1;
      }
      let line = text.slice(start, end);
      if (this.#line !== "") {
        if (this.#line.length + line.length > this.#maxEventSize) {
          this.#tooLarge("a line", this.#line.length + line.length);
        }
        line = this.#line + line;
        this.#line = "";
      } else if (line.length > this.#maxEventSize) {
        this.#tooLarge("a line", line.length);
      }
      this.#dispatchLine(line, events);
      start = next;
      if (cr !== -1 && cr < start) cr = text.indexOf("\r", start);
      if (lf !== -1 && lf < start) lf = text.indexOf("\n", start);
    }
    if (start < length) {
      const size = this.#line.length + (length - start);
      if (size > this.#maxEventSize) this.#tooLarge("an unfinished line", size);
      this.#line += text.slice(start);
    }
    return events;
  }

  #dispatchLine(line, events) {
    if (line === "") {
      this.#lastEventId = this.#idBuffer;
      if (this.#data !== "") {
        events.push({
          event: this.#event || "message",
          data: this.#data.slice(0, -1),
          id: this.#idBuffer,
          retry: this.#eventRetry,
        });
      }
      this.#data = "";
      this.#event = "";
      this.#eventRetry = null;
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" a comment (the keep-alives)
    const colon = line.indexOf(":");
    let name = line;
    let value = "";
    if (colon !== -1) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    if (name === "data") {
      const size = this.#data.length + value.length; // the data with this line, at dispatch
      if (size > this.#maxEventSize) this.#tooLarge("the data of an event", size);
      this.#data += value + "\n";
    } else if (name === "event") {
      this.#event = value;
    } else if (name === "id") {
      if (!value.includes("\0")) this.#idBuffer = value;
    } else if (name === "retry" && DIGITS.test(value)) {
      this.#retry = this.#eventRetry = Number(value);
    }
  }
}

/**
 * Read `response`'s body as events, calling `onEvent(event)` for each, until the body
 * ends (resolves) or `onEvent` returns `false` (resolves; the body is cancelled). A body
 * that fails, an event stream the parser refuses, or an `onEvent` that throws rejects,
 * the body cancelled. An event without its blank line at the end is dropped. The body
 * is released (unlocked) in every case.
 * @param {Response} response
 * @param {(event: ServerSentEvent) => boolean | void} onEvent
 * @param {{maxEventSize?: number}} [options] the parser's, as SSEParser's
 */
export async function readEvents(response, onEvent, options) {
  const parser = new SSEParser(options);
  const reader = response.body.getReader();
  let ended = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      for (const event of done ? parser.close() : parser.feed(value)) {
        if (onEvent(event) === false) return;
      }
      if (done) {
        ended = true;
        return;
      }
    }
  } finally {
    if (!ended) reader.cancel().catch(() => {}); // stop the body (an aborted one is already)
    reader.releaseLock();
  }
}
