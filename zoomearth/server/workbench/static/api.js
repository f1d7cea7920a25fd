// The workbench's client of the server: JSON routes with the bearer token, uploads, and the
// OpenAI-compatible chat stream (server-sent events) with its `zoomearth_event` extension.

const TOKEN_KEY = "zoomearth.workbench.token";

/** An HTTP error with the server's OpenAI-shaped message, status and code. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code || null;
  }
}

/** The bearer token typed into the login box (kept for this browser tab only). */
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Called with the ApiError of every 401, so the page can show its login box.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  const err = new ApiError(response.status, message, code);
  if (response.status === 401) onUnauthorized(err);
  return err;
}

/**
 * A JSON request to the server.
 * @param {string} path - e.g. "/v1/workbench/scenes".
 * @param {{method?: string, body?: any, auth?: boolean}} [opts]
 * @returns {Promise<any>} the parsed JSON body.
 */
export async function fetchJSON(path, opts = {}) {
  const headers = opts.auth === false ? {} : authHeaders();
  const init = { method: opts.method || "GET", headers };
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** GET /v1/workbench/config: served without a token (it only says whether one is needed). */
export function getConfig() {
  return fetchJSON("/v1/workbench/config", { auth: false });
}

export function listScenes() {
  return fetchJSON("/v1/workbench/scenes");
}

/** A map layer for a scene path, an upload, a URL or a thread's raster artifact. */
export function openLayer(source) {
  return fetchJSON("/v1/workbench/layers", { method: "POST", body: source });
}

/** The thread history, or null when the server has no such thread (a new conversation). */
export async function getThread(conversationId) {
  try {
    return await fetchJSON(`/v1/workbench/threads/${encodeURIComponent(conversationId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

/** POST /v1/files (multipart): the OpenAI file record plus `url`, `width`, `height`. */
export async function uploadFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("purpose", "vision");
  const response = await fetch("/v1/files", { method: "POST", headers: authHeaders(), body: form });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** A signed URL (tiles, GeoJSON, downloads): fetched without the bearer header. */
export async function fetchSigned(url) {
  const response = await fetch(url);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/**
 * Split a buffer of server-sent events into complete events and the unfinished rest.
 * @param {string} buffer - text received so far (CRLF already normalised to LF).
 * @returns {{events: string[], rest: string}} each event's joined `data:` lines.
 */
export function splitSSE(buffer) {
  const events = [];
  let rest = buffer;
  let cut;
  while ((cut = rest.indexOf("\n\n")) >= 0) {
    const block = rest.slice(0, cut);
    rest = rest.slice(cut + 2);
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // comment (keep-alive)
      if (line.startsWith("data:")) data.push(line.slice(line.charAt(5) === " " ? 6 : 5));
    }
    if (data.length) events.push(data.join("\n"));
  }
  return { events, rest };
}

/**
 * Stream one chat turn from POST /v1/chat/completions (stream: true).
 *
 * The page is an ordinary client of the OpenAI-compatible API: it sends the conversation's
 * messages and names the conversation with the X-Conversation-Id header (needed for approvals).
 *
 * @param {object[]} messages - OpenAI chat messages (the first user message carries the image).
 * @param {string} conversationId - the thread's id.
 * @param {{onContent?: Function, onReasoning?: Function, onEvent?: Function,
 *          onFinal?: Function, signal?: AbortSignal}} handlers
 * @returns {Promise<{content: string, zoomearth: object|null}>}
 */
export async function streamChat(messages, conversationId, handlers = {}) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: authHeaders({
      "Content-Type": "application/json",
      "X-Conversation-Id": conversationId,
      Accept: "text/event-stream",
    }),
    body: JSON.stringify({ model: "zoomearth", stream: true, messages }),
    signal: handlers.signal,
  });
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let content = "";
  let zoomearth = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    const { events, rest } = splitSSE(buffer);
    buffer = rest;
    for (const data of events) {
      if (data === "[DONE]") return { content, zoomearth };
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch (_) {
        continue; // not JSON: nothing a chat client could show
      }
      if (chunk.error) throw new ApiError(500, chunk.error.message || "stream error",
                                          chunk.error.code);
      if (chunk.zoomearth_event && handlers.onEvent) handlers.onEvent(chunk.zoomearth_event);
      const choice = (chunk.choices || [])[0];
      const delta = (choice && choice.delta) || {};
      if (delta.reasoning_content && handlers.onReasoning) handlers.onReasoning(delta.reasoning_content);
      if (delta.content) {
        content += delta.content;
        if (handlers.onContent) handlers.onContent(delta.content, content);
      }
      if (chunk.zoomearth) {
        zoomearth = chunk.zoomearth;
        if (handlers.onFinal) handlers.onFinal(chunk.zoomearth);
      }
    }
  }
  return { content, zoomearth };
}
