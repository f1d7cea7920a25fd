// Building page elements from data: text from the server is always set as text, never parsed
// as HTML.

/**
 * A new element: `attrs.class` sets the class, `attrs.text` the text content; other attributes
 * are set as strings (true: present and empty; undefined, null or false: left out).
 * @param {string} tag
 * @param {object} [attrs]
 * @param {...(Node|string|null|undefined)} children - appended in order (falsy ones skipped).
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
