// Before/after swipe: the "after" raster layer is clipped to the right of a divider that a
// range input moves; the scene ("before") shows on the left. The clip is set through the CSSOM
// (allowed by the page's Content-Security-Policy, unlike style attributes in markup).

export class Swipe {
  /**
   * @param {HTMLElement} root - the swipe overlay (holds the range input and the divider line).
   * @param {HTMLInputElement} range - 0..1000, the divider position across the map.
   * @param {HTMLElement} line - the divider drawn over the map.
   * @param {HTMLElement} nameEl - where the "after" layer's name is written.
   */
  constructor(root, range, line, nameEl) {
    this.root = root;
    this.range = range;
    this.line = line;
    this.nameEl = nameEl;
    this.map = null;
    this.layer = null;
    this.onChange = () => {};
    this.update = this.update.bind(this);
    range.addEventListener("input", this.update);
  }

  /** Swipe `layer` (an L.TileLayer already on `map`) against what lies below it. */
  attach(map, layer, name) {
    this.detach();
    this.map = map;
    this.layer = layer;
    this.nameEl.textContent = String(name || "after").replace(/^s\d+-[0-9a-f]+-/, "");
    this.root.hidden = false;
    map.on("move zoom zoomend resize viewreset", this.update);
    layer.on("load tileload", this.update);
    this.update();
  }

  detach() {
    if (this.map) this.map.off("move zoom zoomend resize viewreset", this.update);
    if (this.layer) {
      this.layer.off("load tileload", this.update);
      const c = this.layer.getContainer();
      if (c) c.style.clip = "";
    }
    this.map = null;
    this.layer = null;
    this.root.hidden = true;
    this.onChange(null);
  }

  /** The divider position as a fraction of the map's width (0 = left edge). */
  get fraction() {
    return Number(this.range.value) / 1000;
  }

  update() {
    if (!this.map || !this.layer) return;
    const container = this.layer.getContainer();
    if (!container) return;
    const size = this.map.getSize();
    // The tile container moves with the map pane: clip in its own (layer point) coordinates.
    const nw = this.map.containerPointToLayerPoint([0, 0]);
    const se = this.map.containerPointToLayerPoint(size);
    const x = nw.x + size.x * this.fraction;
    container.style.clip = `rect(${nw.y}px, ${se.x}px, ${se.y}px, ${x}px)`;
    this.line.style.left = `${(this.fraction * 100).toFixed(2)}%`;
    this.onChange(this.fraction);
  }
}
