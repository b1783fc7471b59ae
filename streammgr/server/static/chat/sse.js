// A Server-Sent Events parser for a fetch() body read chunk by chunk (WHATWG HTML
// 9.2.6), the browser twin of streammgr.sse.SSEParser: feed(bytes) returns the events
// that chunk completed. What a chunk leaves unfinished carries over to the next one:
// a line cut anywhere, a CR whose LF comes in the next chunk, a UTF-8 sequence split
// between chunks (TextDecoder in streaming mode). An unfinished line is bounded.
// No DOM, no I/O: tests feed it every chunking of a stream.

const CR = "\r";
const LF = "\n";
const DIGITS = /^[0-9]+$/;

export class SSEParser {
  /**
   * @param {{maxLine?: number}} [options] maxLine: the longest line (characters)
   *   held while it arrives; a longer one throws, instead of growing without bound.
   */
  constructor({ maxLine = 1 << 20 } = {}) {
    this.maxLine = maxLine;
    this.decoder = new TextDecoder("utf-8"); // drops a leading BOM, once
    this.buffer = ""; // the unfinished line
    this.skipLF = false; // the last chunk ended with CR: a LF next ends the same line
    this.data = "";
    this.event = "";
    this.idBuffer = "";
    this.lastEventId = "";
    this.retry = null; // the retry of the event being built
    this.reconnectionTime = null;
  }

  /** The events a chunk of the body completed. @param {Uint8Array} bytes */
  feed(bytes) {
    return this.#text(this.decoder.decode(bytes, { stream: true }));
  }

  /** The body ended: flush the decoder. An event without its blank line is dropped. */
  end() {
    const events = this.#text(this.decoder.decode());
    this.buffer = "";
    this.data = "";
    this.event = "";
    this.retry = null;
    return events;
  }

  /** Whether the body stopped inside an event (it ended before its blank line). */
  get incomplete() {
    return this.buffer !== "" || this.data !== "";
  }

  #text(text) {
    const events = [];
    if (text === "") return events;
    if (this.skipLF) {
      this.skipLF = false;
      if (text[0] === LF) text = text.slice(1);
    }
    const buffer = this.buffer + text;
    let start = 0;
    let cr = buffer.indexOf(CR);
    let lf = buffer.indexOf(LF);
    while (cr !== -1 || lf !== -1) {
      let end;
      let next;
      if (lf === -1 || (cr !== -1 && cr < lf)) {
        end = cr;
        if (cr + 1 === buffer.length) {
          this.skipLF = true; // its LF, if any, is in the next chunk
          next = cr + 1;
        } else {
          next = buffer[cr + 1] === LF ? cr + 2 : cr + 1;
        }
      } else {
        end = lf;
        next = lf + 1;
      }
      this.#line(buffer.slice(start, end), events);
      start = next;
      if (cr !== -1 && cr < start) cr = buffer.indexOf(CR, start);
      if (lf !== -1 && lf < start) lf = buffer.indexOf(LF, start);
    }
    this.buffer = buffer.slice(start);
    if (this.buffer.length > this.maxLine) {
      throw new Error(
        `an event-stream line longer than ${this.maxLine} characters: not an event stream?`,
      );
    }
    return events;
  }

  #line(line, events) {
    if (line === "") {
      this.lastEventId = this.idBuffer;
      if (this.data !== "") {
        events.push({
          event: this.event || "message",
          data: this.data.slice(0, -1),
          id: this.idBuffer,
          retry: this.retry,
        });
      }
      this.data = "";
      this.event = "";
      this.retry = null;
      return;
    }
    if (line[0] === ":") return; // a comment (keep-alives)
    const colon = line.indexOf(":");
    let name = line;
    let value = "";
    if (colon !== -1) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    if (name === "data") {
      this.data += value + LF;
    } else if (name === "event") {
      this.event = value;
    } else if (name === "id") {
      if (!value.includes("\0")) this.idBuffer = value;
    } else if (name === "retry" && DIGITS.test(value)) {
      this.retry = this.reconnectionTime = Number(value);
    }
  }
}
