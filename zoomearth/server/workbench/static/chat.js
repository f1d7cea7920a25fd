// The chat column: user messages, and for each assistant turn its progress lines (as they
// stream), its steps (zooms, tool calls, artifacts: click a zoom to fly to its box) and the
// answer. Text from the server is always set as text (never parsed as HTML); the answer's
// markdown links and images are rebuilt as elements.

import { el } from "./dom.js";

/** Whether a link from the answer may become an <a>/<img> (http(s) or same-origin paths). */
function safeUrl(url) {
  try {
    const u = new URL(url, window.location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u : null;
  } catch (_) {
    return null;
  }
}

/** One line of text with its markdown links and images rebuilt as elements, into `parent`. */
function renderInline(parent, line) {
  const pattern = /(!?)\[([^\]]*)\]\(([^)\s]+)\)/g;
  let last = 0;
  let m;
  while ((m = pattern.exec(line)) !== null) {
    if (m.index > last) parent.append(line.slice(last, m.index));
    const url = safeUrl(m[3]);
    if (!url) {
      parent.append(m[0]);
    } else if (m[1] === "!" && url.origin === window.location.origin) {
      parent.append(el("a", { href: url.href, target: "_blank", rel: "noopener", class: "answer-img",
                              title: m[2] },
                       el("img", { src: url.href, alt: m[2], loading: "lazy" })));
    } else {
      parent.append(el("a", { href: url.href, target: "_blank", rel: "noopener",
                              text: m[2] || url.href }));
    }
    last = m.index + m[0].length;
  }
  if (last < line.length) parent.append(line.slice(last));
}

/**
 * Render the answer's text: paragraphs and lines, `[text](url)` links and `![alt](url)` images
 * (images of this origin only: the CSP allows no others). The server's list of artifact links
 * ("Artifacts:" followed by markdown links: the steps above hold them too) is folded away; its
 * previews (before/after pictures, where the agent looked) show as a row of thumbnails.
 */
export function renderAnswer(text) {
  const root = el("div", { class: "answer" });
  for (const para of String(text || "").split(/\n{2,}/)) {
    const lines = para.split("\n");
    if (/^Artifacts:\n- \[/.test(para)) {
      const details = el("details", { class: "answer-links" },
                         el("summary", { text: `links (${lines.length - 1})` }));
      const list = el("ul");
      for (const line of lines.slice(1)) {
        const li = el("li");
        renderInline(li, line.replace(/^- /, ""));
        list.append(li);
      }
      details.append(list);
      root.append(details);
      continue;
    }
    if (lines.every((l) => /^!\[[^\]]*\]\([^)\s]+\)$/.test(l.trim()))) {
      const row = el("div", { class: "answer-previews" });
      for (const line of lines) renderInline(row, line.trim());
      root.append(row);
      continue;
    }
    const p = el("p");
    lines.forEach((line, i) => {
      renderInline(p, line);
      if (i < lines.length - 1) p.append(el("br"));
    });
    root.append(p);
  }
  return root;
}

const TOOL_STATUS = {
  started: "running",
  ok: "done",
  failed: "failed",
  needs_approval: "awaiting approval",
  denied: "denied",
};

export class AssistantTurn {
  constructor(root, onStepClick) {
    this.onStepClick = onStepClick;
    this.root = el("div", { class: "msg msg-assistant" });
    this.steps = el("ol", { class: "steps" });
    this.details = el("details", { class: "progress", open: true });
    this.details.append(el("summary", { text: "progress" }));
    this.log = el("pre", { class: "progress-log" });
    this.details.append(this.log);
    this.answer = el("div", { class: "answer-wrap" });
    this.spinner = el("div", { class: "typing", text: "working…" });
    this.root.append(this.steps, this.details, this.answer, this.spinner);
    this.tools = new Map(); // call_id -> step element
    root.append(this.root);
    this.hasProgress = false;
    this.details.hidden = true;
  }

  progress(text) {
    this.hasProgress = true;
    this.details.hidden = false;
    this.log.textContent += text;
    this.log.scrollTop = this.log.scrollHeight;
  }

  /** A `view` RunEvent: a numbered step that flies to its box when clicked. */
  addView(ev) {
    if (ev.view_id === 0) return;
    const box = (ev.box_xyxy || []).map(Math.round).join(", ");
    const li = el("li", { class: "step step-view", "data-view": ev.view_id, tabindex: "0",
                          role: "button", title: "Show this box on the map" },
                  el("span", { class: "badge", text: String(ev.view_id) }),
                  el("span", { text: `Zoom on [${box}]${ev.date ? ` (${ev.date})` : ""}` }));
    const go = () => this.onStepClick(ev.view_id);
    li.addEventListener("click", go);
    li.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        go();
      }
    });
    this.steps.append(li);
  }

  /** A `tool` RunEvent: one step per call, updated as its status changes. */
  addTool(ev) {
    let li = this.tools.get(ev.call_id);
    if (!li) {
      li = el("li", { class: "step step-tool" });
      this.tools.set(ev.call_id || `${ev.name}-${this.tools.size}`, li);
      this.steps.append(li);
    }
    li.dataset.status = ev.status;
    li.replaceChildren(el("span", { class: "badge badge-tool", text: "⚙" }),
                       el("span", { class: "tool-name", text: ev.name }),
                       el("span", { class: `tool-status status-${ev.status}`,
                                    text: TOOL_STATUS[ev.status] || ev.status }));
    if (ev.message) li.title = ev.message;
  }

  /** An `artifact` RunEvent: its name and a signed download link. */
  addArtifact(ev) {
    const li = el("li", { class: "step step-artifact", title: ev.summary || ev.name,
                          "data-artifact": ev.artifact_id },
                  el("span", { class: "badge badge-artifact", text: String(ev.artifact_id) }),
                  el("span", { class: "artifact-name",
                               text: String(ev.name || "").replace(/^s\d+-[0-9a-f]+-/, "") }),
                  el("span", { class: "artifact-kind", text: ev.artifact_kind || ev.kind }));
    const url = ev.download_url && safeUrl(ev.download_url);
    if (url) {
      li.append(el("a", { href: url.href, download: ev.name, class: "download", text: "download",
                          "data-artifact-id": ev.artifact_id }));
    }
    this.steps.append(li);
  }

  /**
   * The user's answer to an approval question: the run resumes in this same turn (as the
   * thread's history tells it: one assistant reply per question).
   */
  decide(text, approve) {
    this.steps.append(el("li", { class: `step step-decision ${approve ? "approved" : "denied"}` },
                         el("span", { class: "badge badge-decision", text: approve ? "✓" : "✕" }),
                         el("span", { text: `You answered “${text}”` })));
    this.root.append(this.spinner);
    for (const old of this.root.querySelectorAll(":scope > .error")) old.remove();
  }

  setAnswer(text) {
    this.answer.replaceChildren(renderAnswer(text));
  }

  done(error) {
    this.spinner.remove();
    if (this.hasProgress) this.details.open = false;
    if (error) this.root.append(el("div", { class: "error", text: error }));
  }
}

export class ChatView {
  /**
   * @param {HTMLElement} root - the messages column.
   * @param {(viewId: number) => void} onStepClick - a zoom step was clicked.
   */
  constructor(root, onStepClick) {
    this.root = root;
    this.onStepClick = onStepClick;
  }

  clear() {
    this.root.replaceChildren();
  }

  addUser(text) {
    this.root.append(el("div", { class: "msg msg-user", text }));
    this.scroll();
  }

  addNote(text) {
    this.root.append(el("div", { class: "note", text }));
    this.scroll();
  }

  startAssistant() {
    const turn = new AssistantTurn(this.root, this.onStepClick);
    this.scroll();
    return turn;
  }

  scroll() {
    this.root.scrollTop = this.root.scrollHeight;
  }
}
