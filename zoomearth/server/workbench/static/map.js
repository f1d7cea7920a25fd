// The map: one Leaflet map per scene frame (Leaflet cannot change a map's CRS), the scene's
// tile layer, and the agent's zoom boxes numbered by view id.
//
// Frames (see the Layer object of GET/POST /v1/workbench/layers):
//  * "lonlat": georeferenced scene, EPSG:3857 web-map tiles in their real place (no basemap:
//    the page works offline); boxes arrive as [lat, lng] polygons.
//  * "pixel": no georeferencing, L.CRS.Simple; a full-resolution pixel (px, py) sits at
//    map.unproject([px, py], native_zoom), boxes arrive as [lat, lng] in that same frame.

const L = window.L;

/** Leaflet LatLngBounds of a Layer (its `bounds`, or computed from its size in pixel frame). */
export function layerBounds(map, layer) {
  if (Array.isArray(layer.bounds) && layer.bounds.length === 2) return L.latLngBounds(layer.bounds);
  const nz = layer.native_zoom || 0;
  return L.latLngBounds(map.unproject([0, layer.height], nz), map.unproject([layer.width, 0], nz));
}

/**
 * A raster tile layer for a Layer object (the scene or a raster tool output).
 * @param {object} layer - Layer: tiles template (signed for the whole layer), zooms, bounds.
 * @param {L.Map} map
 * @param {object} [extra] - more L.TileLayer options (opacity, zIndex ...).
 */
export function tileLayerFor(layer, map, extra) {
  const opts = Object.assign({
    tileSize: 256,
    minZoom: map.getMinZoom(),
    maxZoom: map.getMaxZoom(),
    maxNativeZoom: layer.native_zoom,
    minNativeZoom: layer.min_zoom,
    // Only tiles over the image are requested (the server answers 404 outside it).
    bounds: layerBounds(map, layer),
    noWrap: true,
    keepBuffer: 2,
    className: "ze-raster",
  }, extra || {});
  return L.tileLayer(layer.tiles, opts);
}

export class MapView {
  /** @param {HTMLElement} el - the map container. */
  constructor(el) {
    this.el = el;
    this.map = null;
    this.frame = null;
    this.scene = null;
    this.sceneLayer = null;
    this.boxes = new Map(); // view_id -> {polygon, label}
    this.boxGroup = null;
    this.onCreate = () => {};
    this.keepers = []; // timers renewing the signed tile URLs of this map's layers
  }

  /**
   * Keep a tile layer's signed URL valid while this map lives: 5 minutes before the Layer's
   * `expires_in_s` runs out (at half of it for short lifetimes; counted from now, so the
   * browser's clock does not matter), `reopen()` fetches the Layer again and its new tile
   * template replaces the old one without a redraw. A failed renewal is tried again every
   * 10 s; a tile refused meanwhile (e.g. after the computer slept) renews at once and reloads.
   * Stopped when the map is replaced or cleared.
   * @param {L.TileLayer} tileLayer
   * @param {object} layer - the Layer the tile layer was made from.
   * @param {() => Promise<object>} reopen - resolves to a fresh Layer of the same raster.
   */
  keepSigned(tileLayer, layer, reopen) {
    const keeper = { timer: null, stopped: false, lastForced: 0 };
    const renewIn = (ttl) => Math.max(ttl * 0.5, ttl - 300) * 1000;
    const renew = async (redraw) => {
      try {
        const fresh = await reopen();
        if (keeper.stopped) return;
        tileLayer.setUrl(fresh.tiles, !redraw);
        if (fresh.expires_in_s) schedule(renewIn(fresh.expires_in_s));
      } catch (err) {
        if (!keeper.stopped) schedule(10_000);
      }
    };
    const schedule = (ms) => {
      clearTimeout(keeper.timer);
      keeper.timer = setTimeout(() => {
        if (!keeper.stopped) renew(false);
      }, Math.max(1000, ms));
    };
    tileLayer.on("tileerror", () => {
      const now = Date.now();
      if (keeper.stopped || now - keeper.lastForced < 10_000) return;
      keeper.lastForced = now;
      renew(true);
    });
    if (layer.expires_in_s) schedule(renewIn(layer.expires_in_s));
    this.keepers.push(keeper);
  }

  stopKeepers() {
    for (const keeper of this.keepers) {
      keeper.stopped = true;
      clearTimeout(keeper.timer);
    }
    this.keepers = [];
  }

  /**
   * Show a scene: (re)create the map in the scene's frame and fit it.
   * @param {object} layer - the scene's Layer.
   * @param {() => Promise<object>} [reopen] - fetches the Layer again (renews its signed URL).
   */
  setScene(layer, reopen) {
    this.stopKeepers();
    if (this.map) {
      this.map.remove();
      this.map = null;
    }
    this.boxes.clear();
    this.frame = layer.frame;
    this.scene = layer;
    const pixel = layer.frame === "pixel";
    const minZoom = Math.max(0, (layer.min_zoom ?? 0) - (pixel ? 0 : 2));
    const maxZoom = (layer.max_zoom ?? layer.native_zoom ?? 18) + 2;
    this.map = L.map(this.el, {
      crs: pixel ? L.CRS.Simple : L.CRS.EPSG3857,
      minZoom,
      maxZoom,
      zoomSnap: 0.25,
      zoomDelta: 0.5,
      attributionControl: false,
      worldCopyJump: false,
      preferCanvas: false,
      zoomControl: false,
    });
    // Top right: the top left is where zoom boxes of the image's corner put their numbers.
    L.control.zoom({ position: "topright" }).addTo(this.map);
    // A scale bar only where map units are metres on the ground (not in pixel space).
    if (!pixel) L.control.scale({ imperial: false, position: "bottomleft" }).addTo(this.map);
    // Panes: raster outputs above the scene, vectors above them, boxes on top.
    this.map.createPane("outputs").style.zIndex = 250;
    this.map.createPane("boxes").style.zIndex = 450;
    this.sceneLayer = tileLayerFor(layer, this.map, { zIndex: 1 }).addTo(this.map);
    if (reopen) this.keepSigned(this.sceneLayer, layer, reopen);
    this.boxGroup = L.layerGroup().addTo(this.map);
    const bounds = layerBounds(this.map, layer);
    this.map.fitBounds(bounds, { animate: false, padding: [8, 8] });
    this.map.setMaxBounds(bounds.pad(0.5));
    this.onCreate(this.map);
    return this.map;
  }

  /** Remove the map (no scene open). */
  clear() {
    this.stopKeepers();
    if (this.map) this.map.remove();
    this.map = null;
    this.scene = null;
    this.sceneLayer = null;
    this.boxes.clear();
  }

  /**
   * Draw the box of a `view` RunEvent, labelled with its view id (as in trajectory.png).
   * The overview (view 0) is the whole scene and is not drawn. Views of the same region (a
   * follow-up on the same box) share one outline whose label lists their ids ("1 · 5").
   * @param {{view_id: number, polygon: number[][], box_xyxy: number[]}} ev
   * @param {Function} [onClick] - called with the view id when the box or its label is clicked.
   */
  addBox(ev, onClick) {
    if (!this.map || !Array.isArray(ev.polygon) || ev.view_id === 0) return null;
    if (this.boxes.has(ev.view_id)) return this.boxes.get(ev.view_id).polygon;
    const key = (ev.box_xyxy || []).map(Math.round).join(",");
    let entry = [...this.boxes.values()].find((e) => e.key === key);
    if (!entry) {
      const polygon = L.polygon(ev.polygon, {
        pane: "boxes",
        color: "#ffcc00",
        weight: 2,
        // No fill: only the outline takes clicks, so layers below (polygons) stay clickable.
        fill: false,
        className: "ze-box",
      });
      const label = L.marker(polygon.getBounds().getNorthWest(), {
        pane: "boxes",
        keyboard: false,
        icon: L.divIcon({ className: "ze-box-label", html: "<span></span>", iconSize: null,
                          iconAnchor: [0, 22] }),
      });
      entry = { key, polygon, label, ids: [] };
      const latest = () => entry.ids[entry.ids.length - 1];
      if (onClick) {
        polygon.on("click", () => onClick(latest()));
        label.on("click", () => onClick(latest()));
      }
      polygon.addTo(this.boxGroup);
      label.addTo(this.boxGroup);
    }
    entry.ids.push(ev.view_id);
    const ids = entry.ids.map(Number);
    const span = entry.label.getElement() && entry.label.getElement().querySelector("span");
    if (span) span.textContent = ids.join(" · ");
    entry.label.options.icon.options.html = `<span>${ids.join(" · ")}</span>`;
    entry.polygon.getElement()?.setAttribute("data-views", ids.join(" "));
    entry.polygon.bindTooltip(`view ${ids.join(", ")}: [${key.split(",").join(", ")}] px`,
                              { sticky: true });
    this.boxes.set(ev.view_id, entry);
    return entry.polygon;
  }

  /** The distinct outlines drawn (views of the same region share one). */
  get outlines() {
    return new Set(this.boxes.values()).size;
  }

  /** Fly to the box of a view and highlight it. */
  flyToBox(viewId) {
    const box = this.boxes.get(viewId);
    if (!this.map || !box) return false;
    this.map.flyToBounds(box.polygon.getBounds(), { padding: [40, 40], duration: 0.6 });
    const el = box.polygon.getElement();
    if (el) {
      el.classList.remove("ze-flash");
      // Restart the CSS animation.
      void el.getBoundingClientRect();
      el.classList.add("ze-flash");
    }
    for (const other of new Set(this.boxes.values())) {
      const on = other === box;
      other.polygon.setStyle({ color: on ? "#ff6a00" : "#ffcc00", weight: on ? 3 : 2 });
    }
    return true;
  }

  setBoxesVisible(visible) {
    if (!this.map || !this.boxGroup) return;
    if (visible) this.boxGroup.addTo(this.map);
    else this.boxGroup.remove();
  }
}
