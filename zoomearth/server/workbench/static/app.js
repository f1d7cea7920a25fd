// The workbench page: wires the scene picker, the map, the layers panel and the chat together.
//
// Threads persist on the server; the page keeps only the conversation id (URL hash
// `#thread=<id>` and localStorage), and on load rebuilds messages, zoom boxes and layers from
// GET /v1/workbench/threads/{id}.

import * as api from "./api.js";
import { ChatView } from "./chat.js";
import { LayersPanel } from "./layers.js";
import { MapView } from "./map.js";
import { Swipe } from "./swipe.js";

const CONV_KEY = "zoomearth.workbench.conversation";
const sceneKey = (conv) => `zoomearth.workbench.scene.${conv}`;
const startedKey = (conv) => `zoomearth.workbench.started.${conv}`;
const CONV_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  conv: null, // conversation id (the server's thread)
  scene: null, // Layer of the open scene
  imageUrl: null, // how the first chat message names the scene (file://, upload URL, URL)
  source: null, // the POST /v1/workbench/layers body that opened the scene
  messages: [], // OpenAI chat messages sent with every turn (the page is an API client)
  started: false, // whether the server has this thread
  busy: false,
  pendingTurn: null, // the assistant turn whose run waits for Approve / Deny
};

// The server's approval words (docs/server.md, "Approval"; zoomearth/server/chat.py), read the
// same way; anything else makes the server repeat the question.
const APPROVE_WORDS = new Set(["approve", "approved", "yes", "y", "ok", "okay", "go", "go ahead",
  "run it", "proceed", "allow"]);
const DENY_WORDS = new Set(["deny", "denied", "no", "n", "skip", "cancel", "stop", "don't",
  "do not"]);

/** true: approve, false: deny, null: not an answer to an approval question. */
function approvalWord(text) {
  const norm = text.toLowerCase().replace(/[^a-z' ]/g, "").trim();
  if (APPROVE_WORDS.has(norm)) return true;
  if (DENY_WORDS.has(norm)) return false;
  return null;
}

const mapView = new MapView($("map"));
const swipe = new Swipe($("swipe"), $("swipe-range"), $("swipe-line"), $("swipe-name"));
const layers = new LayersPanel($("layer-list"), $("layers-empty"), swipe);
swipe.onChange = () => layers.syncSwipeButtons();
const chat = new ChatView($("messages"), flyToView);

// For the browser tests and for debugging in the console; holds no secret.
window.zoomearthWorkbench = { state, mapView, layers, swipe };

// -- small helpers ---------------------------------------------------------------------------
function newConversationId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `wb-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

const NO_IMAGE_NOTE = "This thread's image was uploaded, and a new thread cannot reuse it: "
  + "open or upload a scene for the new thread (left panel).";

function fileUrl(path) {
  return `file://${path.split("/").map(encodeURIComponent).join("/")}`;
}

function setStatus(text, kind) {
  $("status-text").textContent = text;
  $("status-dot").dataset.state = kind || "ok";
}

function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.busy = busy ? "true" : "false";
  $("send").disabled = busy || !state.scene;
  $("prompt").disabled = !state.scene;
  $("approve").disabled = busy;
  $("deny").disabled = busy;
  setStatus(busy ? "agent working…" : "ready", busy ? "busy" : "ok");
}

function showError(err) {
  const message = err && err.message ? err.message : String(err);
  chat.addNote(message);
  setStatus(message.length > 60 ? `${message.slice(0, 57)}…` : message, "error");
}

function setConversation(conv) {
  state.conv = conv;
  localStorage.setItem(CONV_KEY, conv);
  const hash = `#thread=${encodeURIComponent(conv)}`;
  if (window.location.hash !== hash) history.replaceState(null, "", hash);
  $("thread-id").textContent = `thread ${conv}`;
}

function conversationFromUrl() {
  const match = /thread=([^&]+)/.exec(window.location.hash);
  if (match) {
    const id = decodeURIComponent(match[1]);
    if (CONV_RE.test(id)) return id;
  }
  const stored = localStorage.getItem(CONV_KEY);
  return stored && CONV_RE.test(stored) ? stored : null;
}

// -- login -----------------------------------------------------------------------------------
let loginWaiters = [];

function showLogin(err) {
  const box = $("login");
  if (!box.hidden) return;
  box.hidden = false;
  $("logout").hidden = true;
  const msg = $("login-error");
  if (err && api.getToken()) {
    msg.textContent = "The token was refused; check it and sign in again.";
    msg.hidden = false;
  }
  api.setToken("");
  setStatus("sign in required", "error");
  $("login-token").focus();
}

function waitForLogin() {
  return new Promise((resolve) => loginWaiters.push(resolve));
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("login-token").value.trim();
  const msg = $("login-error");
  if (!token) return;
  api.setToken(token);
  try {
    await api.listScenes();
  } catch (err) {
    api.setToken("");
    msg.textContent = err.status === 401 ? "Invalid token." : err.message;
    msg.hidden = false;
    return;
  }
  msg.hidden = true;
  $("login").hidden = true;
  $("login-token").value = "";
  $("logout").hidden = false;
  const waiters = loginWaiters;
  loginWaiters = [];
  waiters.forEach((resolve) => resolve());
});

$("logout").addEventListener("click", () => {
  api.setToken("");
  window.location.reload();
});

// -- scenes ----------------------------------------------------------------------------------
async function loadScenes() {
  const select = $("scene-select");
  const { scenes } = await api.listScenes();
  select.replaceChildren();
  if (!scenes.length) {
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = "(no rasters under allowed_roots)";
    select.append(opt);
  }
  for (const s of scenes) {
    const opt = document.createElement("option");
    opt.value = s.path;
    const mb = s.size_bytes ? ` (${(s.size_bytes / 1e6).toFixed(1)} MB)` : "";
    opt.textContent = `${s.name}${mb}`;
    opt.title = s.path;
    select.append(opt);
  }
  $("scene-hint").textContent = scenes.length
    ? "" : "Start the server with allowed_roots naming a folder of rasters, or upload one.";
  return scenes;
}

/** Point the scene list at the open scene (an upload or a URL gets an entry of its own). */
function syncSceneSelect(source, name) {
  const select = $("scene-select");
  select.querySelector("option[data-other]")?.remove();
  if (source && source.path) {
    select.value = source.path;
    return;
  }
  const opt = document.createElement("option");
  opt.value = "";
  opt.dataset.other = "1";
  opt.textContent = `${source && source.file_id ? "uploaded" : "opened"}: ${name}`;
  select.prepend(opt);
  select.value = "";
}

/** Show a scene's Layer on the map and make it the scene of the current thread. */
function showScene(layer) {
  state.scene = layer;
  // The signed tile URL is renewed from the same source (a thread's scene once it has one).
  const source = state.started ? { conversation_id: state.conv } : state.source;
  mapView.setScene(layer, source ? () => api.openLayer(source) : null);
  layers.reset(mapView);
  $("map-empty").hidden = true;
  $("scene-title").textContent = `${layer.name} · ${layer.width} × ${layer.height} px · ${
    layer.frame === "pixel" ? "pixel space (no georeferencing)" : "georeferenced"}`;
  setBusy(false);
}

/**
 * Open a scene picked by the user: a new thread starts when the current one already holds a
 * conversation (one thread is about one image).
 */
async function openScene(source, imageUrl) {
  setStatus("opening scene…", "busy");
  let layer;
  try {
    layer = await api.openLayer(source);
  } catch (err) {
    showError(err);
    return;
  }
  if (state.messages.length || state.started) resetConversation(newConversationId());
  state.imageUrl = imageUrl;
  state.source = source;
  syncSceneSelect(source, layer.name);
  localStorage.setItem(sceneKey(state.conv), JSON.stringify({ source, imageUrl }));
  showScene(layer);
}

$("scene-open").addEventListener("click", () => {
  const path = $("scene-select").value;
  if (path) openScene({ path }, fileUrl(path));
});

$("scene-upload").addEventListener("change", async (e) => {
  const file = e.target.files && e.target.files[0];
  if (!file) return;
  setStatus(`uploading ${file.name}…`, "busy");
  try {
    const record = await api.uploadFile(file);
    await openScene({ file_id: record.id }, record.url);
  } catch (err) {
    showError(err);
  } finally {
    e.target.value = "";
  }
});

$("scene-url-open").addEventListener("click", () => {
  const url = $("scene-url").value.trim();
  if (url) openScene({ url }, url);
});

// -- threads ---------------------------------------------------------------------------------
function resetConversation(conv) {
  setConversation(conv);
  state.messages = [];
  state.started = false;
  state.pendingTurn = null;
  chat.clear();
  hideApproval();
  if (state.scene) showScene(state.scene);
}

$("new-thread").addEventListener("click", () => {
  if (state.busy) return;
  resetConversation(newConversationId());
  if (state.scene && !state.imageUrl) chat.addNote(NO_IMAGE_NOTE);
  if (state.scene && state.source) {
    // Reloading before the first question reopens this scene.
    localStorage.setItem(sceneKey(state.conv), JSON.stringify({ source: state.source,
                                                                imageUrl: state.imageUrl }));
  }
});

/**
 * Download links are signed for link_ttl_s: one clicked after it has expired (or within a
 * minute of it) gets a fresh URL from the thread's history first, instead of a 403.
 */
document.addEventListener("click", async (e) => {
  const a = e.target instanceof Element ? e.target.closest("a[data-artifact-id]") : null;
  if (!a || !a.dataset.artifactId || a.dataset.renewing) return;
  const exp = Number(new URL(a.href, window.location.href).searchParams.get("exp") || 0);
  if (!exp || exp * 1000 > Date.now() + 60_000) return;
  e.preventDefault();
  a.dataset.renewing = "1";
  try {
    const thread = await api.getThread(state.conv);
    const id = Number(a.dataset.artifactId);
    const fresh = (thread && thread.events || []).find(
      (ev) => ev.type === "artifact" && ev.artifact_id === id && ev.download_url);
    if (!fresh) throw new Error("this output is no longer part of the thread");
    for (const other of document.querySelectorAll(`a[data-artifact-id="${id}"]`)) {
      other.href = fresh.download_url;
    }
    a.click();
  } catch (err) {
    showError(err);
  } finally {
    delete a.dataset.renewing;
  }
});

/** Split a thread's events into its assistant turns: each `answer` event closes one. */
function eventsByTurn(events, turns) {
  const out = Array.from({ length: Math.max(turns, 1) }, () => []);
  let i = 0;
  for (const ev of events || []) {
    out[Math.min(i, out.length - 1)].push(ev);
    if (ev.type === "answer") i += 1;
  }
  return out;
}

/** Rebuild the page from the server's thread history (or a stored, not yet used scene). */
async function restore(conv) {
  setConversation(conv);
  chat.clear();
  hideApproval();
  state.messages = [];
  state.started = false;
  state.pendingTurn = null;
  // A thread this browser opened but never asked anything in is not on the server: asking for
  // it would only log a 404 in the console. Threads from a shared link are looked up.
  const unused = localStorage.getItem(sceneKey(conv)) !== null
    && localStorage.getItem(startedKey(conv)) === null;
  const thread = unused ? null : await api.getThread(conv);
  if (!thread) {
    const saved = JSON.parse(localStorage.getItem(sceneKey(conv)) || "null");
    if (saved && saved.source) {
      await openScene(saved.source, saved.imageUrl);
      return true;
    }
    return false;
  }
  state.started = true;
  if (thread.scene) showScene(thread.scene);
  const saved = JSON.parse(localStorage.getItem(sceneKey(conv)) || "null");
  // A shared link has nothing stored here: the server says how to name the image again.
  state.imageUrl = saved && saved.imageUrl ? saved.imageUrl : thread.image_url || null;
  // The thread's own scene layer (a shared link has no stored source).
  state.source = saved && saved.source ? saved.source : { conversation_id: conv };
  const messages = thread.messages || [];
  const assistants = messages.filter((m) => m.role === "assistant").length;
  const turns = eventsByTurn(thread.events, assistants);
  let turnIndex = 0;
  let lastTurn = null;
  for (const m of messages) {
    const text = typeof m.content === "string" ? m.content
      : (m.content || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
    state.messages.push({ role: m.role, content: text });
    if (m.role === "user") {
      chat.addUser(text);
    } else if (m.role === "assistant") {
      const turn = chat.startAssistant();
      lastTurn = turn;
      for (const ev of turns[turnIndex] || []) handleEvent(ev, turn);
      turnIndex += 1;
      turn.setAnswer(text);
      turn.done();
    }
  }
  if (!assistants && thread.events && thread.events.length) {
    // A run without a recorded reply yet (e.g. still running): show its steps anyway.
    const turn = chat.startAssistant();
    for (const ev of thread.events) handleEvent(ev, turn);
    turn.done();
  }
  if (thread.pending_approval) {
    state.pendingTurn = lastTurn;
    showApproval(thread.pending_approval.text);
  }
  chat.scroll();
  return true;
}

window.addEventListener("hashchange", () => {
  const conv = conversationFromUrl();
  if (conv && conv !== state.conv && !state.busy) restore(conv).catch(showError);
});

// -- the agent's run events ------------------------------------------------------------------
function flyToView(viewId) {
  mapView.flyToBox(viewId);
  for (const li of document.querySelectorAll(".step-view")) {
    li.classList.toggle("active", Number(li.dataset.view) === viewId);
  }
}

/** A raster output shown at once: the main product, not its masks (listed, hidden). */
function isPrimaryRaster(ev) {
  return ev.artifact_kind !== "mask";
}

function handleEvent(ev, turn) {
  switch (ev.type) {
    case "view":
      mapView.addBox(ev, flyToView);
      turn.addView(ev);
      break;
    case "tool":
      turn.addTool(ev);
      break;
    case "artifact":
      turn.addArtifact(ev);
      if (ev.layer) {
        const conv = state.conv;
        layers.addRaster(ev, {
          visible: isPrimaryRaster(ev),
          reopen: () => api.openLayer({ conversation_id: conv, artifact_id: ev.artifact_id }),
        });
      }
      else if (ev.layer_error) chat.addNote(`${ev.name}: ${ev.layer_error}`);
      if (ev.geojson_url) {
        layers.addVector(ev).catch((err) => chat.addNote(`Could not load ${ev.name}: ${err.message}`));
      }
      break;
    default:
      break;
  }
}

// -- chat ------------------------------------------------------------------------------------
function showApproval(text) {
  $("approval-text").textContent = text || "A tool needs your approval.";
  $("approval").hidden = false;
}

function hideApproval() {
  $("approval").hidden = true;
}

async function send(text) {
  text = text.trim();
  if (!text || state.busy) return;
  if (!state.scene) {
    chat.addNote("Open a scene first (left panel).");
    return;
  }
  const first = !state.started && state.messages.length === 0;
  if (first && !state.imageUrl) {
    // A new thread from a shared link to an uploaded image: the server cannot name it again.
    chat.addNote(NO_IMAGE_NOTE);
    return;
  }
  const content = first && state.imageUrl
    ? [{ type: "text", text }, { type: "image_url", image_url: { url: state.imageUrl } }]
    : text;
  state.messages.push({ role: "user", content });
  hideApproval();
  const decision = approvalWord(text);
  let turn;
  if (state.pendingTurn && decision !== null) {
    // An answer to the approval question: the same run resumes in the same turn.
    turn = state.pendingTurn;
    turn.decide(text, decision);
  } else {
    chat.addUser(text);
    turn = chat.startAssistant();
  }
  state.pendingTurn = null;
  setBusy(true);
  let awaiting = false;
  let reply = "";
  try {
    const result = await api.streamChat(state.messages, state.conv, {
      onReasoning: (t) => turn.progress(t),
      onEvent: (ev) => handleEvent(ev, turn),
      onContent: (_delta, all) => {
        turn.setAnswer(all);
        chat.scroll();
      },
    });
    reply = result.content;
    state.started = true;
    localStorage.setItem(startedKey(state.conv), "1");
    awaiting = Boolean(result.zoomearth && result.zoomearth.status === "awaiting_approval");
    turn.done();
  } catch (err) {
    reply = `(error: ${err.message})`;
    turn.done(err.message);
  } finally {
    state.messages.push({ role: "assistant", content: reply });
    setBusy(false);
  }
  if (awaiting) {
    state.pendingTurn = turn;
    showApproval(reply);
  }
  chat.scroll();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("prompt");
  const text = prompt.value;
  prompt.value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

$("approve").addEventListener("click", () => send("approve"));
$("deny").addEventListener("click", () => send("deny"));

// -- start -----------------------------------------------------------------------------------
async function boot() {
  document.body.dataset.ready = "false";
  setBusy(false);
  api.setUnauthorizedHandler(showLogin);
  try {
    state.config = await api.getConfig();
  } catch (err) {
    setStatus("server unreachable", "error");
    chat.addNote(`Cannot reach the server: ${err.message}`);
    return;
  }
  $("remote-box").hidden = !state.config.remote_urls;
  if (state.config.token_required && !api.getToken()) {
    showLogin();
    await waitForLogin();
  }
  $("logout").hidden = !state.config.token_required;
  let scenes = [];
  for (;;) {
    try {
      scenes = await loadScenes();
      break;
    } catch (err) {
      if (err.status !== 401) throw err;
      await waitForLogin(); // the login box is up (a stale token was refused)
    }
  }
  const known = conversationFromUrl();
  let restored = false;
  if (known) restored = await restore(known);
  else setConversation(newConversationId());
  if (!restored && scenes.length) {
    // A fresh thread: open a scene of the allowed roots at once, ready to ask. The largest
    // GeoTIFF at the top of a root: pictures (overview.png) and masks often lie beside a scene.
    const tiffs = scenes.filter((s) => /\.tiff?$/i.test(s.name) && !s.name.includes("/"));
    const first = tiffs.sort((a, b) => (b.size_bytes || 0) - (a.size_bytes || 0))[0] || scenes[0];
    $("scene-select").value = first.path;
    await openScene({ path: first.path }, fileUrl(first.path));
  }
  setBusy(false);
  document.body.dataset.ready = "true";
}

boot().catch((err) => {
  showError(err);
  document.body.dataset.ready = "true";
});
