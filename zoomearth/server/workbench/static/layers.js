// Tool outputs as map layers, and the layers panel: raster tile layers (opacity slider,
// before/after swipe), GeoJSON vector layers (popups with area and label), download links.

import { fetchSigned } from "./api.js";
import { el } from "./dom.js";
import { layerBounds, tileLayerFor } from "./map.js";

const L = window.L;

const nf = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

/** An artifact's file name without the run's step prefix ("s001-3980-"): what it is. */
export function displayName(name) {
  return String(name || "").replace(/^s\d+-[0-9a-f]+-/, "");
}

/** The popup of a GeoJSON feature: its label, area in m² and other short properties. */
export function featurePopup(properties, name) {
  const props = properties || {};
  const box = el("div", { class: "ze-popup" });
  const label = props.label ?? props.class ?? props.name;
  const title = typeof label === "string" && label ? label : name || "feature";
  box.append(el("div", { class: "ze-popup-title", text: title }));
  const rows = el("table");
  if (label !== undefined && label !== null && label !== title) {
    rows.append(el("tr", {}, el("th", { text: "label" }), el("td", { text: String(label) })));
  }
  const area = props.area_m2 ?? props.area;
  if (area !== undefined && area !== null && area !== "") {
    const value = Number(area);
    rows.append(el("tr", {}, el("th", { text: "Area" }),
                   el("td", { class: "ze-area",
                              text: Number.isFinite(value) ? `${nf.format(value)} m²` : String(area) })));
  }
  for (const [k, v] of Object.entries(props)) {
    if (["label", "class", "name", "area_m2", "area"].includes(k) || v === null || typeof v === "object") continue;
    const text = String(v);
    if (text.length > 80) continue;
    rows.append(el("tr", {}, el("th", { text: k }), el("td", { text })));
  }
  box.append(rows);
  return box;
}

export class LayersPanel {
  /**
   * @param {HTMLElement} listEl - the <ul> of the panel.
   * @param {HTMLElement} emptyEl - the hint shown while there are no output layers.
   * @param {import("./swipe.js").Swipe} swipe - the before/after control.
   */
  constructor(listEl, emptyEl, swipe) {
    this.listEl = listEl;
    this.emptyEl = emptyEl;
    this.swipe = swipe;
    this.map = null;
    this.mapView = null;
    this.items = new Map(); // key -> {kind, leaflet, row, ...}
  }

  /** Attach to a (new) map: everything listed so far belonged to the previous map. */
  reset(mapView) {
    this.mapView = mapView;
    this.map = mapView.map;
    this.items.clear();
    this.listEl.replaceChildren();
    this.swipe.detach();
    if (this.map) this.addSceneRow(mapView);
    this.updateEmpty();
  }

  updateEmpty() {
    const outputs = [...this.items.values()].filter((i) => i.kind !== "scene");
    this.emptyEl.hidden = outputs.length > 0;
  }

  addSceneRow(mapView) {
    const scene = mapView.scene;
    const row = el("li", { class: "layer layer-scene", "data-kind": "scene" });
    const head = el("div", { class: "layer-head" });
    head.append(el("span", { class: "layer-swatch swatch-scene" }),
                el("span", { class: "layer-name", text: scene.name || "scene", title: scene.name }),
                el("span", { class: "layer-kind", text: scene.frame === "pixel" ? "pixels" : "map" }));
    row.append(head);
    const boxes = el("label", { class: "layer-toggle" });
    const cb = el("input", { type: "checkbox", checked: true, "data-role": "boxes" });
    cb.checked = true;
    cb.addEventListener("change", () => mapView.setBoxesVisible(cb.checked));
    boxes.append(cb, document.createTextNode(" zoom boxes"));
    row.append(boxes, this.opacityControl((v) => mapView.sceneLayer.setOpacity(v), 1));
    this.listEl.append(row);
    this.items.set("scene", { kind: "scene", row });
  }

  opacityControl(apply, initial) {
    const wrap = el("label", { class: "layer-opacity" });
    const input = el("input", { type: "range", min: "0", max: "100", value: String(initial * 100),
                                "data-role": "opacity", "aria-label": "opacity" });
    const out = el("span", { class: "layer-opacity-value", text: `${Math.round(initial * 100)}%` });
    input.addEventListener("input", () => {
      apply(Number(input.value) / 100);
      out.textContent = `${input.value}%`;
    });
    wrap.append(document.createTextNode("opacity "), input, out);
    return wrap;
  }

  downloadLink(url, name, artifactId) {
    if (!url) return null;
    return el("a", { class: "layer-download", href: url, download: name || "", text: "download",
                     title: `Download ${name || "the artifact"} (signed link)`,
                     "data-artifact-id": artifactId ?? "" });
  }

  rowFor(key, kind, name, subtitle, art) {
    const row = el("li", { class: `layer layer-${kind}`, "data-kind": kind, "data-key": key,
                           "data-artifact-kind": art ? art.artifact_kind : null,
                           "data-tool": art ? art.tool : null,
                           title: art ? art.summary || art.name : null });
    const head = el("div", { class: "layer-head" });
    const cb = el("input", { type: "checkbox", "data-role": "visible", "aria-label": `show ${name}` });
    head.append(cb, el("span", { class: `layer-swatch swatch-${kind}` }),
                el("span", { class: "layer-name", text: name, title: name }));
    if (subtitle) head.append(el("span", { class: "layer-kind", text: subtitle }));
    row.append(head);
    return { row, cb };
  }

  /**
   * A raster output as a tile layer (from an `artifact` RunEvent with a `layer`).
   * @param {object} art - the artifact event.
   * @param {{visible?: boolean, reopen?: () => Promise<object>}} [opts] - `reopen` fetches the
   *   Layer again, to renew its signed URL (see MapView.keepSigned).
   */
  addRaster(art, opts = {}) {
    if (!this.map || !art.layer) return null;
    const key = `artifact-${art.artifact_id}`;
    if (this.items.has(key)) return this.items.get(key);
    const visible = opts.visible !== false;
    const layer = tileLayerFor(art.layer, this.map, { pane: "outputs", zIndex: 10 + this.items.size });
    if (opts.reopen) this.mapView.keepSigned(layer, art.layer, opts.reopen);
    const { row, cb } = this.rowFor(key, "raster", displayName(art.name || art.layer.name),
                                    `#${art.artifact_id}`, art);
    cb.checked = visible;
    if (visible) layer.addTo(this.map);
    const swipeBtn = el("button", { type: "button", class: "btn btn-small", "data-role": "swipe",
                                    text: "swipe", title: "Before/after swipe against the scene" });
    const zoomBtn = el("button", { type: "button", class: "btn btn-small", "data-role": "zoom",
                                   text: "zoom to", title: "Zoom to this layer" });
    const tools = el("div", { class: "layer-tools" }, swipeBtn, zoomBtn,
                     this.downloadLink(art.download_url, art.name, art.artifact_id));
    row.append(this.opacityControl((v) => layer.setOpacity(v), 1), tools);
    cb.addEventListener("change", () => {
      if (cb.checked) layer.addTo(this.map);
      else {
        if (this.swipe.layer === layer) this.swipe.detach();
        layer.remove();
      }
    });
    swipeBtn.addEventListener("click", () => {
      if (this.swipe.layer === layer) {
        this.swipe.detach();
      } else {
        if (!cb.checked) {
          cb.checked = true;
          layer.addTo(this.map);
        }
        this.swipe.attach(this.map, layer, art.name || "after");
      }
      this.syncSwipeButtons();
    });
    zoomBtn.addEventListener("click", () => {
      this.map.flyToBounds(layerBounds(this.map, art.layer), { padding: [30, 30], duration: 0.6 });
    });
    this.listEl.append(row);
    const item = { kind: "raster", leaflet: layer, row, art, swipeBtn };
    this.items.set(key, item);
    this.updateEmpty();
    return item;
  }

  syncSwipeButtons() {
    for (const item of this.items.values()) {
      if (item.swipeBtn) item.swipeBtn.classList.toggle("active", this.swipe.layer === item.leaflet);
    }
  }

  /**
   * A vector output (GeoJSON from its signed `geojson_url`) with popups.
   *
   * The server sends it in the scene layer's frame, as GeoJSON [lng, lat] pairs Leaflet reads
   * as they are: EPSG:4326 [lon, lat] for a "lonlat" scene; for a "pixel" scene the L.CRS.Simple
   * point of full-resolution pixel (px, py), [px / 2**native_zoom, -py / 2**native_zoom].
   */
  async addVector(art, opts = {}) {
    if (!this.map || !art.geojson_url) return null;
    const key = `artifact-${art.artifact_id}`;
    if (this.items.has(key)) return this.items.get(key);
    const { row, cb } = this.rowFor(key, "vector", displayName(art.name || "vector"),
                                    `#${art.artifact_id}`, art);
    const item = { kind: "vector", leaflet: null, row, art };
    this.items.set(key, item);
    this.listEl.append(row);
    this.updateEmpty();
    const data = await fetchSigned(art.geojson_url);
    const map = this.map;
    const layer = L.geoJSON(data, {
      style: () => ({ color: "#00e5ff", weight: 2, fillColor: "#00e5ff", fillOpacity: 0.25,
                      className: "ze-vector" }),
      pointToLayer: (_f, latlng) => L.circleMarker(latlng, { radius: 5, className: "ze-vector" }),
      onEachFeature: (feature, lyr) => {
        lyr.bindPopup(() => featurePopup(feature.properties, displayName(art.name)),
                      { maxWidth: 280 });
      },
    });
    if (map !== this.map) return null; // the scene changed while the GeoJSON was loading
    item.leaflet = layer;
    const visible = opts.visible !== false;
    cb.checked = visible;
    if (visible) layer.addTo(map);
    const count = (data.features || []).length;
    row.append(el("div", { class: "layer-meta", text: `${count} feature${count === 1 ? "" : "s"}` }),
               this.opacityControl((v) => layer.setStyle({ opacity: v, fillOpacity: 0.25 * v }), 1));
    const zoomBtn = el("button", { type: "button", class: "btn btn-small", text: "zoom to",
                                   "data-role": "zoom" });
    zoomBtn.addEventListener("click", () => {
      const b = layer.getBounds();
      if (b.isValid()) map.flyToBounds(b, { padding: [40, 40], maxZoom: map.getMaxZoom() - 2 });
    });
    row.append(el("div", { class: "layer-tools" }, zoomBtn,
                  this.downloadLink(art.download_url, art.name, art.artifact_id)));
    cb.addEventListener("change", () => (cb.checked ? layer.addTo(map) : layer.remove()));
    return item;
  }
}
