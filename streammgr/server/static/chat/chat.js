// The chat page: streams a chat completion from the gateway, token by token, over
// fetch() and a streaming reader (SSE, parsed by sse.js) or over the WebSocket route
// /v1/chat/ws. Stop (or leaving the page) ends the request: the fetch is aborted or the
// socket closed, and the gateway ends the stream as client_disconnected, its upstream
// request closed. A refusal (429...) or an in-band error is shown as a message, never a
// silent end. Everything shown goes through textContent; no inline script (the page's
// CSP forbids it).

import { readEvents } from "./sse.js";

/**
 * The gateway's base URLs from what the user gave: an http(s) URL with an optional
 * path prefix, no credentials, query or fragment.
 * @returns {{http: string, ws: string}}
 */
export function gatewayBase(value) {
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`the gateway must be a URL such as https://gateway.example:8000, got ${value}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`the gateway must be an http:// or https:// URL, got ${value}`);
  }
  if (url.username || url.password || url.search || url.hash) {
    throw new Error("the gateway URL must hold no credentials, query or fragment");
  }
  const http = url.origin + url.pathname.replace(/\/+$/, "");
  return { http, ws: http.replace(/^http/, "ws") };
}

/** What an error answer or an in-band error says, for people. */
export function describeError(error, status, retryAfter) {
  const message = (error && typeof error.message === "string" && error.message) || "";
  const code = error && typeof error.code === "string" ? error.code : "";
  let text = message || (status ? `the gateway answered ${status}` : "the request failed");
  if (code && !text.includes(code)) text += ` (${code})`;
  if (retryAfter && !/retry/i.test(text)) text += `; retry after ${retryAfter} s`;
  return text;
}

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ui = {
  transcript: $("transcript"),
  status: $("status"),
  gatewayForm: $("gateway-form"),
  gateway: $("gateway"),
  chatForm: $("chat-form"),
  model: $("model"),
  transport: $("transport"),
  options: $("options"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

let base = null;
const conversation = []; // {role, content}, sent with each request
let current = null; // the request in flight: {stop(reason)}
let requestNumber = 0;

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  document.body.dataset.state = state;
  const busy = state === "streaming";
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

function addMessage(role, text) {
  const item = document.createElement("div");
  item.className = `message ${role}`;
  const who = document.createElement("div");
  who.className = "role";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  ui.transcript.append(item);
  item.scrollIntoView({ block: "end" });
  return body;
}

function showError(text) {
  addMessage("error", text);
  setStatus("error", text);
}

function extraFields() {
  const text = ui.options.value.trim();
  if (!text) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`Options must be a JSON object: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error("Options must be a JSON object, e.g. {\"temperature\": 0.2}");
  }
  return value;
}

/** Streams over POST /v1/chat/completions; resolves when the answer has ended. */
async function overHttp(body, reply) {
  const controller = new AbortController();
  let stopped = null;
  current = {
    stop(reason) {
      stopped = reason;
      controller.abort();
    },
  };
  let response;
  try {
    response = await fetch(`${base.http}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
      signal: controller.signal,
      credentials: "omit",
    });
  } catch (error) {
    if (stopped) return { stopped };
    return {
      error:
        `could not reach the gateway at ${base.http} (${error.message}); is it running, ` +
        `and started with --cors-origin ${location.origin}?`,
    };
  }
  if (!response.ok) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      // not JSON: the status says enough
    }
    return { error: describeError(error, response.status, response.headers.get("retry-after")) };
  }
  let done = false;
  let failed = null; // an event that ends the answer with an error
  const onEvent = (event) => {
    if (event.data === "[DONE]") {
      done = true;
      return true;
    }
    let chunk;
    try {
      chunk = JSON.parse(event.data);
    } catch {
      failed = { error: "the gateway sent an event that is not JSON" };
      return false;
    }
    if (event.event === "error" || (chunk && chunk.error)) {
      failed = { error: describeError(chunk && chunk.error) };
      return false;
    }
    const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
    if (delta && typeof delta.content === "string") reply(delta.content);
    return true;
  };
  try {
    await readEvents(response, onEvent); // stops (the body cancelled) at an error event
  } catch (error) {
    if (stopped) return { stopped };
    return { error: `the stream broke: ${error.message}` };
  }
  if (failed) return failed;
  if (!done) return { error: "the stream ended before the answer was complete" };
  return {};
}

/** Streams over the WebSocket route /v1/chat/ws (a socket per request). */
function overWebSocket(body, reply) {
  return new Promise((resolve) => {
    const id = `r${++requestNumber}`;
    let socket;
    try {
      socket = new WebSocket(`${base.ws}/v1/chat/ws`);
    } catch (error) {
      resolve({ error: `cannot open a WebSocket to ${base.ws}: ${error.message}` });
      return;
    }
    let settled = false;
    let opened = false;
    const finish = (outcome) => {
      if (settled) return;
      settled = true;
      socket.close(1000);
      resolve(outcome);
    };
    current = { stop: (reason) => finish({ stopped: reason }) };
    socket.onopen = () => {
      opened = true;
      socket.send(JSON.stringify({ ...body, type: "chat.request", id }));
    };
    socket.onmessage = (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        finish({ error: "the gateway sent a message that is not JSON" });
        return;
      }
      if (data.type === "error") {
        finish({ error: describeError(data.error) });
      } else if (data.type === "chat.response" && data.id === id) {
        if (data.delta && typeof data.delta.content === "string") reply(data.delta.content);
        if (data.done) {
          const retry = data.error && data.error.retry_after;
          finish(data.error ? { error: describeError(data.error, 0, retry) } : {});
        }
      }
    };
    socket.onclose = (event) => {
      finish({
        error: opened
          ? `the connection closed before the answer was complete (code ${event.code})`
          : `the WebSocket to ${base.ws} was refused or failed; is the gateway started ` +
            `with --cors-origin ${location.origin}?`,
      });
    };
  });
}

async function send(prompt) {
  let extra;
  try {
    extra = extraFields();
  } catch (error) {
    showError(error.message);
    return;
  }
  const model = ui.model.value.trim();
  if (!model) {
    showError("a model is needed (e.g. sim-small with the built-in simulator)");
    return;
  }
  conversation.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const text = addMessage("assistant", "");
  const bubble = text.parentElement;
  bubble.dataset.state = "streaming";
  let answer = "";
  const reply = (piece) => {
    answer += piece;
    text.textContent = answer;
  };
  setStatus("streaming", "Streaming…");
  const body = { ...extra, model, messages: conversation.slice() };
  const over = ui.transport.value === "websocket" ? overWebSocket : overHttp;
  let outcome;
  try {
    outcome = await over(body, reply);
  } catch (error) {
    outcome = { error: `the page failed: ${error.message}` }; // never stuck "streaming"
  }
  current = null;
  if (answer) conversation.push({ role: "assistant", content: answer });
  if (outcome.stopped) {
    bubble.dataset.state = "stopped";
    setStatus("stopped", outcome.stopped === "left" ? "Left the page." : "Stopped.");
  } else if (outcome.error) {
    bubble.dataset.state = "error";
    showError(outcome.error);
  } else {
    bubble.dataset.state = "done";
    setStatus("done", "Done.");
  }
}

function start() {
  const given = params.get("gateway") || location.origin;
  try {
    base = gatewayBase(given);
  } catch (error) {
    ui.gateway.value = given;
    showError(error.message);
    ui.send.disabled = true;
    return;
  }
  ui.gateway.value = base.http;
  ui.model.value = params.get("model") || ui.model.value;
  if (params.get("transport") === "websocket") ui.transport.value = "websocket";
  setStatus("idle", `Ready: ${base.http}`);

  ui.gatewayForm.addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      const chosen = gatewayBase(ui.gateway.value.trim());
      const next = new URLSearchParams(location.search);
      next.set("gateway", chosen.http);
      location.search = next.toString(); // the page's CSP is made for its gateway
    } catch (error) {
      showError(error.message);
    }
  });
  ui.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = ui.prompt.value.trim();
    if (!prompt || current) return;
    ui.prompt.value = "";
    send(prompt);
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      ui.chatForm.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => current && current.stop("user"));
  // Leaving the page ends the stream at once (the browser would, later, too).
  window.addEventListener("pagehide", () => current && current.stop("left"));
}

start();
