// stacklab ImageViewer front end (anywidget ES module, no bundler).
// Python owns the state; this file asks for the tiles it shows, colours them with
// lookup tables sent by Python, and draws overlays. Formulas match widgets/_render.py:
// screen pixel (sx, sy) shows image point x = cx + (sx + 0.5 - W/2) / zoom,
// y = cy - (sy + 0.5 - H/2) / zoom, read from level L = clip(floor(log2(1/zoom))) at
// index floor((x + 0.5) / 2^L); q = floor((v - lo) * 4095 / (hi - lo) + 0.5).

const N_LEVELS = 4096;
const MAX_TILES = 512; // tile cache size (256^2 float32 = 256 KiB each)

function u8(view) { return new Uint8Array(view.buffer, view.byteOffset, view.byteLength); }
function typed(view, Type) {
  const copy = view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
  return new Type(copy);
}

function sexagesimal(deg, hours) {
  let v = hours ? deg / 15 : Math.abs(deg);
  const sign = hours ? "" : (deg < 0 ? "-" : "+");
  let a = Math.floor(v); let m = Math.floor((v - a) * 60); let s = ((v - a) * 60 - m) * 60;
  if (s >= 59.995) { s = 0; m += 1; } if (m >= 60) { m = 0; a += 1; }
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${sign}${pad(a, 2)}:${pad(m, 2)}:${s.toFixed(hours ? 3 : 2).padStart(hours ? 6 : 5, "0")}`;
}

function render({ model, el }) {
  const root = document.createElement("div"); root.className = "slv-root";
  const stage = document.createElement("div"); stage.className = "slv-stage"; stage.tabIndex = 0;
  const imageCanvas = document.createElement("canvas"); imageCanvas.className = "slv-image";
  const overlayCanvas = document.createElement("canvas"); overlayCanvas.className = "slv-overlay";
  const tip = document.createElement("div"); tip.className = "slv-tip";
  const bar = document.createElement("div"); bar.className = "slv-bar";
  const readout = document.createElement("span"); readout.className = "slv-readout";
  const title = document.createElement("span"); title.className = "slv-title";
  const fitButton = document.createElement("button"); fitButton.textContent = "fit";
  const oneButton = document.createElement("button"); oneButton.textContent = "1:1";
  bar.append(fitButton, oneButton, title, readout);
  stage.append(imageCanvas, overlayCanvas, tip); root.append(stage, bar); el.append(root);
  const ctx = imageCanvas.getContext("2d", { willReadFrequently: true });
  const octx = overlayCanvas.getContext("2d");

  const state = {
    W: 0, H: 0, cx: 0, cy: 0, zoom: 1, info: null, tiles: new Map(), pending: new Set(),
    lut: new Uint32Array(N_LEVELS), maskBits: [], layers: [], frame: 0, imageDirty: true,
    overlayDirty: true, preview: null, frameData: null, selected: new Set(), hover: null,
  };
  const stats = { frames: 0, lastFrameMs: 0, tilesReceived: 0, firstPaint: 0, sharp: false };
  // Test and benchmark hooks: read-only state, plus a programmatic view change.
  root.__slv = {
    state, stats,
    setView(cx, cy, zoom) { state.cx = cx; state.cy = cy; state.zoom = zoom; viewportChanged(); },
  };
  el.__slv = root.__slv;

  function size() {
    state.W = model.get("width"); state.H = model.get("height");
    stage.style.width = `${state.W}px`; stage.style.height = `${state.H}px`;
    for (const c of [imageCanvas, overlayCanvas]) {
      c.width = state.W; c.height = state.H; c.style.width = `${state.W}px`; c.style.height = `${state.H}px`;
    }
    state.frameData = ctx.createImageData(state.W, state.H);
    state.imageDirty = state.overlayDirty = true; schedule();
  }

  // ---- state from Python ---------------------------------------------------------------
  function loadImage() {
    const info = model.get("_image");
    if (!info || !info.nx) { state.info = null; schedule(); return; }
    title.textContent = info.title || ""; // FITS header text: textContent, never HTML
    state.info = info; state.tiles.clear(); state.pending.clear(); stats.sharp = false;
    state.preview = { data: typed(info.preview, Float32Array), nx: info.preview_nx, ny: info.preview_ny, stride: info.preview_stride };
    state.wcs = info.wcs_n ? { n: info.wcs_n, grid: typed(info.wcs_grid, Float64Array), names: info.wcs_names, sexa: info.wcs_sexagesimal } : null;
    state.imageDirty = state.overlayDirty = true; schedule();
  }
  function loadDisplay() {
    const d = model.get("_display"); if (!d || d.lo === undefined) return;
    const stretch = typed(d.stretch, Float32Array); const cmap = u8(d.colormap);
    for (let q = 0; q < N_LEVELS; q++) {
      let c = Math.floor(stretch[q] * 255 + 0.5); c = c < 0 ? 0 : (c > 255 ? 255 : c);
      state.lut[q] = (cmap[4 * c + 3] << 24) | (cmap[4 * c + 2] << 16) | (cmap[4 * c + 1] << 8) | cmap[4 * c];
    }
    state.lo = d.lo; state.hi = d.hi; state.displayRev = (state.displayRev || 0) + 1;
    state.imageDirty = true; schedule();
  }
  function loadMasks() {
    const m = model.get("_masks") || { planes: [] };
    state.maskBits = m.planes.filter(p => p.visible && p.alpha > 0).sort((a, b) => a.bit - b.bit);
    state.maskAll = 0; for (const p of state.maskBits) state.maskAll |= (1 << p.bit);
    state.displayRev = (state.displayRev || 0) + 1; state.imageDirty = true; schedule();
  }
  function loadViewport() {
    const v = model.get("_viewport"); if (!v || v.zoom === undefined) return;
    if (v.source === "browser") return;
    state.cx = v.cx; state.cy = v.cy; state.zoom = v.zoom;
    state.imageDirty = state.overlayDirty = true; schedule();
  }
  function loadLayers() {
    state.layers = (model.get("_layers") || []).map(layer => {
      if (layer.kind === "catalog") {
        return { ...layer, xs: typed(layer.x, Float32Array), ys: typed(layer.y, Float32Array) };
      }
      return {
        ...layer, code: typed(layer.shape, Uint8Array), xs: typed(layer.x, Float32Array), ys: typed(layer.y, Float32Array),
        as: typed(layer.a, Float32Array), bs: typed(layer.b, Float32Array), angles: typed(layer.angle, Float32Array),
        st: typed(layer.style, Uint16Array), tx: typed(layer.text, Int32Array), vs: typed(layer.vertex_start, Uint32Array),
        verts: typed(layer.vertices, Float32Array),
      };
    });
    const sel = model.get("selection") || {};
    state.selected = new Set(sel.rows || []); state.selectedCatalog = sel.catalog;
    state.overlayDirty = true; schedule();
  }

  // ---- tiles ---------------------------------------------------------------------------
  function level() {
    if (!state.info || state.zoom >= 1) return 0;
    return Math.min(Math.max(Math.floor(Math.log2(1 / state.zoom)), 0), state.info.n_levels - 1);
  }
  function visibleTiles(L, margin = 0) {
    const info = state.info, ts = info.tile_size, f = 2 ** L;
    let nx = info.nx, ny = info.ny; for (let i = 0; i < L; i++) { nx = Math.ceil(nx / 2); ny = Math.ceil(ny / 2); }
    const x0 = state.cx + (0.5 - state.W / 2) / state.zoom, x1 = state.cx + (state.W - 0.5 - state.W / 2) / state.zoom;
    const y0 = state.cy - (state.H - 0.5 - state.H / 2) / state.zoom, y1 = state.cy - (0.5 - state.H / 2) / state.zoom;
    const clampT = (v, n) => Math.min(Math.max(v, 0), Math.ceil(n / ts) - 1);
    const tx0 = clampT(Math.floor(Math.floor((x0 + 0.5) / f) / ts), nx), tx1 = clampT(Math.floor(Math.floor((x1 + 0.5) / f) / ts), nx);
    const ty0 = clampT(Math.floor(Math.floor((y0 + 0.5) / f) / ts), ny), ty1 = clampT(Math.floor(Math.floor((y1 + 0.5) / f) / ts), ny);
    const out = [], m = margin;
    for (let ty = ty0 - m; ty <= ty1 + m; ty++) for (let tx = tx0 - m; tx <= tx1 + m; tx++) {
      if (clampT(tx, nx) === tx && clampT(ty, ny) === ty) out.push([L, tx, ty]);
    }
    return { list: out, nx, ny };
  }
  function requestTiles() {
    if (!state.info) return;
    const L = level(); const { list } = visibleTiles(L);
    state.visibleKeys = new Set(list.map(([l, tx, ty]) => `${l}/${tx}/${ty}`));
    const missing = (tiles) => tiles.filter(([l, tx, ty]) => {
      const k = `${l}/${tx}/${ty}`; return !state.tiles.has(k) && !state.pending.has(k);
    });
    const want = missing(list);
    if (want.length) { send(want); return; }
    // Once the view is sharp and still for a moment, fetch the ring of tiles around it so
    // small pans stay sharp (not at once: it would delay the tiles of a quick next move).
    if (state.pending.size === 0) {
      clearTimeout(prefetchTimer);
      const view = `${state.cx}:${state.cy}:${state.zoom}`;
      prefetchTimer = setTimeout(() => {
        if (!state.info || view !== `${state.cx}:${state.cy}:${state.zoom}`) return;
        const ring = missing(visibleTiles(L, 1).list);
        if (ring.length) send(ring);
      }, 300);
    }
  }
  let prefetchTimer = null;
  function send(tiles) {
    for (const [l, tx, ty] of tiles) state.pending.add(`${l}/${tx}/${ty}`);
    for (let i = 0; i < tiles.length; i += 16) {
      model.send({ type: "tiles", rev: state.info.rev, tiles: tiles.slice(i, i + 16) });
    }
  }
  function onMessage(msg, buffers) {
    if (msg.type === "tile") {
      if (!state.info || msg.rev !== state.info.rev) return;
      const key = `${msg.level}/${msg.tx}/${msg.ty}`; state.pending.delete(key);
      const data = typed(buffers[0], Float32Array);
      const mask = msg.has_mask ? typed(buffers[1], Int32Array) : null;
      state.tiles.set(key, { w: msg.w, h: msg.h, data, mask });
      if (state.tiles.size > MAX_TILES) state.tiles.delete(state.tiles.keys().next().value);
      stats.tilesReceived++;
      if (!state.visibleKeys || state.visibleKeys.has(key)) { state.imageDirty = true; schedule(); }
    } else if (msg.type === "row") {
      if (state.hover && state.hover.catalog === msg.catalog && state.hover.row === msg.row) {
        tip.textContent = msg.values.map(([k, v]) => `${k}: ${v}`).join("\n"); // textContent: never HTML
        tip.style.display = "block";
      }
    }
  }

  // ---- drawing -------------------------------------------------------------------------
  let scheduled = false;
  function schedule() { if (!scheduled) { scheduled = true; requestAnimationFrame(draw); } }
  function draw() {
    scheduled = false; const t0 = performance.now();
    if (state.imageDirty) {
      const t = performance.now(); drawImage(); state.imageDirty = false;
      stats.imageMs = performance.now() - t; stats.imageRev = state.displayRev || 0;
      el.dataset.displayed = String(stats.imageRev);
    }
    if (state.overlayDirty) { overlayStart = performance.now(); drawOverlays(); state.overlayDirty = false; }
    stats.frames++; stats.lastFrameMs = performance.now() - t0;
    if (state.info && !stats.firstPaint) {
      stats.firstPaint = Date.now(); el.dataset.painted = String(state.info.rev);
    }
    el.dataset.frames = String(stats.frames);
  }
  function drawImage() {
    const W = state.W, H = state.H, img = state.frameData, out = new Uint32Array(img.data.buffer);
    out.fill(0xff222222);
    const info = state.info;
    if (!info || state.lo === undefined) { ctx.putImageData(img, 0, 0); return; }
    requestTiles();
    const L = level(), f = 2 ** L, ts = info.tile_size, { nx, ny } = visibleTiles(L);
    const scale = (N_LEVELS - 1) / (state.hi - state.lo), lo = state.lo, lut = state.lut;
    const colIdx = new Int32Array(W), colTile = new Int32Array(W), colOff = new Int32Array(W), colPrev = new Int32Array(W);
    const pv = state.preview;
    for (let sx = 0; sx < W; sx++) {
      const x = state.cx + (sx + 0.5 - W / 2) / state.zoom; const i = Math.floor((x + 0.5) / f);
      colIdx[sx] = (i >= 0 && i < nx) ? i : -1; colTile[sx] = Math.floor(i / ts); colOff[sx] = i - colTile[sx] * ts;
      colPrev[sx] = Math.min(pv.nx - 1, Math.max(0, Math.floor((i * f) / pv.stride + 0.5)));
    }
    const bits = state.maskBits, maskAll = state.maskAll | 0;
    let complete = true;
    for (let sy = 0; sy < H; sy++) {
      const y = state.cy - (sy + 0.5 - H / 2) / state.zoom; const j = Math.floor((y + 0.5) / f);
      if (j < 0 || j >= ny) continue;
      const ty = Math.floor(j / ts), oy = j - ty * ts, row = sy * W;
      const prow = Math.min(pv.ny - 1, Math.max(0, Math.floor((j * f) / pv.stride + 0.5))) * pv.nx;
      let lastTx = -2, tile = null;
      for (let sx = 0; sx < W; sx++) {
        if (colIdx[sx] < 0) continue;
        const tx = colTile[sx];
        if (tx !== lastTx) { tile = state.tiles.get(`${L}/${tx}/${ty}`) || null; lastTx = tx; if (!tile) complete = false; }
        const v = tile ? tile.data[oy * tile.w + colOff[sx]] : pv.data[prow + colPrev[sx]];
        if (v !== v) continue; // NaN: background
        let q = Math.floor((v - lo) * scale + 0.5); q = q < 0 ? 0 : (q > N_LEVELS - 1 ? N_LEVELS - 1 : q);
        let c = lut[q];
        if (maskAll && tile && tile.mask) {
          const m = tile.mask[oy * tile.w + colOff[sx]] & maskAll;
          if (m) {
            let r = c & 255, g = (c >> 8) & 255, b = (c >> 16) & 255;
            for (const p of bits) {
              if ((m >> p.bit) & 1) {
                r = r * (1 - p.alpha) + p.color[0] * p.alpha; g = g * (1 - p.alpha) + p.color[1] * p.alpha;
                b = b * (1 - p.alpha) + p.color[2] * p.alpha;
              }
            }
            c = (c & 0xff000000) | (Math.floor(b + 0.5) << 16) | (Math.floor(g + 0.5) << 8) | Math.floor(r + 0.5);
          }
        }
        out[row + sx] = c;
      }
    }
    ctx.putImageData(img, 0, 0);
    stats.sharp = complete;
    el.dataset.sharp = complete ? `${info.rev}:${L}:${state.cx}:${state.cy}:${state.zoom}` : "";
  }
  function toScreen(x, y) { return [(x - state.cx) * state.zoom + state.W / 2, state.H / 2 - (y - state.cy) * state.zoom]; }
  function marker(code, sx, sy, r) {
    if (code === 0) { octx.moveTo(sx + r, sy); octx.arc(sx, sy, r, 0, 2 * Math.PI); }
    else if (code === 1) { octx.rect(sx - r, sy - r, 2 * r, 2 * r); }
    else if (code === 2) { octx.moveTo(sx, sy - r); octx.lineTo(sx + r, sy); octx.lineTo(sx, sy + r); octx.lineTo(sx - r, sy); octx.closePath(); }
    else if (code === 4) { octx.moveTo(sx - r, sy - r); octx.lineTo(sx + r, sy + r); octx.moveTo(sx - r, sy + r); octx.lineTo(sx + r, sy - r); }
    else { const g = code === 5 ? r / 2 : 0; octx.moveTo(sx - r, sy); octx.lineTo(sx - g, sy); octx.moveTo(sx + g, sy); octx.lineTo(sx + r, sy);
      octx.moveTo(sx, sy - r); octx.lineTo(sx, sy - g); octx.moveTo(sx, sy + g); octx.lineTo(sx, sy + r); }
  }
  // Marker stamps: pixel offsets of each marker outline, written straight into an
  // ImageData (100k canvas arcs are far too slow to rasterize without a GPU).
  const stampCache = new Map();
  function stamp(code, size, width) {
    const key = `${code}/${size}/${width}`; if (stampCache.has(key)) return stampCache.get(key);
    const r = size / 2, hw = Math.max(width, 1) / 2, R = Math.ceil(r + hw), out = [];
    for (let dy = -R; dy <= R; dy++) for (let dx = -R; dx <= R; dx++) {
      const ax = Math.abs(dx), ay = Math.abs(dy); let on;
      if (code === 0) on = Math.abs(Math.hypot(dx, dy) - r) <= hw;
      else if (code === 1) on = Math.abs(Math.max(ax, ay) - r) <= hw;
      else if (code === 2) on = Math.abs(ax + ay - r) <= hw;
      else if (code === 4) on = Math.abs(ax - ay) <= hw && Math.max(ax, ay) <= r / Math.SQRT2 + hw;
      else {
        const gap = code === 5 ? r / 2 : -1;
        on = (ay <= hw && ax <= r && ax >= gap) || (ax <= hw && ay <= r && ay >= gap);
      }
      if (on) out.push(dy * state.W + dx, dx, dy);
    }
    const result = Int32Array.from(out); stampCache.set(key, result); return result;
  }
  function cssColor(css) { // "rgba(r,g,b,a)" -> packed little-endian RGBA
    const m = css.match(/[\d.]+/g).map(Number);
    return ((Math.round((m[3] ?? 1) * 255) << 24) | (m[2] << 16) | (m[1] << 8) | m[0]) >>> 0;
  }
  function drawMarkers(layers) {
    const W = state.W, H = state.H; let drawn = 0;
    const img = octx.createImageData(W, H), out = new Uint32Array(img.data.buffer);
    for (const layer of layers) {
      if (stampCache.W !== W) { stampCache.clear(); stampCache.W = W; }
      const st = stamp(layer.marker, layer.size, layer.width), color = cssColor(layer.color);
      const r = layer.size / 2 + layer.width, z = state.zoom, ox = W / 2 - state.cx * z, oy = H / 2 + state.cy * z;
      for (let i = 0; i < layer.n; i++) {
        const sx = Math.round(layer.xs[i] * z + ox), sy = Math.round(oy - layer.ys[i] * z);
        if (sx < -r || sy < -r || sx > W + r || sy > H + r) continue;
        drawn++; const base = sy * W + sx;
        if (sx >= r && sy >= r && sx < W - r && sy < H - r) {
          for (let k = 0; k < st.length; k += 3) out[base + st[k]] = color;
        } else {
          for (let k = 0; k < st.length; k += 3) {
            const px = sx + st[k + 1], py = sy + st[k + 2];
            if (px >= 0 && py >= 0 && px < W && py < H) out[py * W + px] = color;
          }
        }
      }
    }
    octx.putImageData(img, 0, 0);
    return drawn;
  }
  function drawOverlays() {
    octx.setTransform(1, 0, 0, 1, 0, 0); overlayCanvas.style.transform = "";
    state.overlayView = { cx: state.cx, cy: state.cy, zoom: state.zoom };
    const catalogs = state.layers.filter(l => l.kind === "catalog" && l.visible);
    octx.clearRect(0, 0, state.W, state.H);
    let drawn = catalogs.length ? drawMarkers(catalogs) : 0;
    const z = state.zoom;
    for (const layer of catalogs) {
      if (state.selectedCatalog === layer.name && state.selected.size) {
        octx.strokeStyle = "#ffff00"; octx.lineWidth = 2.5; octx.beginPath();
        for (const i of state.selected) {
          if (i < layer.n) { const [sx, sy] = toScreen(layer.xs[i], layer.ys[i]); marker(0, sx, sy, layer.size / 2 + 3); }
        }
        octx.stroke();
      }
    }
    for (const layer of state.layers) {
      if (layer.kind !== "regions" || !layer.visible) continue;
      // One path per run of shapes sharing a style: a stroke per shape is too slow for 10k.
      let current = -1, labels = [];
      const flush = () => { if (current >= 0) octx.stroke(); };
      for (let i = 0; i < layer.n; i++) {
        const code = layer.code[i], [sx, sy] = toScreen(layer.xs[i], layer.ys[i]);
        let ext = 0;
        if (code === 0 || code === 1) ext = Math.max(layer.as[i], layer.bs[i]) * z;
        else if (code === 2) ext = Math.hypot(layer.as[i], layer.bs[i]) / 2 * z;
        else if (code === 3 || code === 4) ext = Infinity;
        else ext = 20;
        if (sx + ext < 0 || sy + ext < 0 || sx - ext > state.W || sy - ext > state.H) continue;
        if (layer.st[i] !== current) {
          flush(); current = layer.st[i]; const style = layer.styles[current];
          octx.strokeStyle = style.color; octx.lineWidth = style.width; octx.setLineDash(style.dash ? [6, 4] : []);
          octx.beginPath();
        }
        const a = layer.as[i] * z, b = layer.bs[i] * z, t = layer.angles[i];
        if (code === 0) { octx.moveTo(sx + a, sy); octx.arc(sx, sy, a, 0, 2 * Math.PI); }
        else if (code === 1) {
          octx.moveTo(sx + a * Math.cos(t), sy - a * Math.sin(t)); octx.ellipse(sx, sy, a, b, -t, 0, 2 * Math.PI);
        } else if (code === 2) {
          const c = Math.cos(t), s = Math.sin(t);
          for (let k = 0; k < 5; k++) {
            const ux = (k === 1 || k === 2 ? 0.5 : -0.5) * a, uy = (k >= 2 && k <= 3 ? 0.5 : -0.5) * b;
            const px = sx + ux * c - uy * s, py = sy - (ux * s + uy * c);
            if (k === 0) octx.moveTo(px, py); else octx.lineTo(px, py);
          }
        } else if (code === 3 || code === 4) {
          for (let k = layer.vs[i]; k < layer.vs[i + 1]; k++) {
            const [px, py] = toScreen(layer.verts[2 * k], layer.verts[2 * k + 1]);
            if (k === layer.vs[i]) octx.moveTo(px, py); else octx.lineTo(px, py);
          }
          if (code === 3) { const [px, py] = toScreen(layer.verts[2 * layer.vs[i]], layer.verts[2 * layer.vs[i] + 1]); octx.lineTo(px, py); }
        } else if (code === 5) { marker(layer.bs[i], sx, sy, layer.as[i] / 2); }
        drawn++;
        if (layer.tx[i] >= 0) labels.push([i, sx, code === 6 ? sy : sy - 4]);
      }
      flush(); octx.setLineDash([]); octx.textAlign = "center";
      for (const [i, x, y] of labels) {
        const style = layer.styles[layer.st[i]]; octx.font = style.font; octx.fillStyle = style.color;
        octx.fillText(layer.texts[layer.tx[i]], x, y); // fillText draws text, never HTML
      }
    }
    el.dataset.overlayShapes = String(drawn);
    state.overlayMs = performance.now() - overlayStart;
  }
  // While the view moves, slow overlays are moved as a picture (CSS transform) and
  // redrawn once the view has been still for a moment.
  let overlayStart = 0, overlayTimer = null;
  function overlayFollowsView() {
    const v = state.overlayView; if (!v) return false;
    const s = state.zoom / v.zoom;
    const tx = state.W / 2 * (1 - s) + (v.cx - state.cx) * state.zoom;
    const ty = state.H / 2 * (1 - s) - (v.cy - state.cy) * state.zoom;
    overlayCanvas.style.transformOrigin = "0 0";
    overlayCanvas.style.transform = `matrix(${s},0,0,${s},${tx},${ty})`;
    clearTimeout(overlayTimer);
    overlayTimer = setTimeout(() => { state.overlayDirty = true; schedule(); }, 150);
    return true;
  }

  // ---- interaction ---------------------------------------------------------------------
  let sendTimer = null;
  function viewportChanged() {
    state.imageDirty = true;
    if (!((state.overlayMs || 0) > 12 && overlayFollowsView())) state.overlayDirty = true;
    schedule();
    clearTimeout(sendTimer);
    sendTimer = setTimeout(() => {
      model.set("_viewport", { cx: state.cx, cy: state.cy, zoom: state.zoom, source: "browser" }); model.save_changes();
    }, 150);
  }
  function imageAt(ev) {
    const rect = stage.getBoundingClientRect(); const sx = ev.clientX - rect.left, sy = ev.clientY - rect.top;
    return { sx, sy, x: state.cx + (sx - state.W / 2) / state.zoom, y: state.cy - (sy - state.H / 2) / state.zoom };
  }
  function zoomAbout(factor, sx, sy) {
    const x = state.cx + (sx - state.W / 2) / state.zoom, y = state.cy - (sy - state.H / 2) / state.zoom;
    state.zoom = Math.min(Math.max(state.zoom * factor, 1e-4), 256);
    state.cx = x - (sx - state.W / 2) / state.zoom; state.cy = y + (sy - state.H / 2) / state.zoom;
    viewportChanged();
  }
  function fit() {
    if (!state.info) return;
    state.zoom = Math.min(state.W / state.info.nx, state.H / state.info.ny);
    state.cx = (state.info.nx - 1) / 2; state.cy = (state.info.ny - 1) / 2; viewportChanged();
  }
  function nearestMarker(sx, sy) {
    let best = null;
    for (const layer of state.layers) {
      if (layer.kind !== "catalog" || !layer.visible) continue;
      const r2 = Math.max(layer.size / 2 + 3, 5) ** 2;
      for (let i = 0; i < layer.n; i++) {
        const [px, py] = toScreen(layer.xs[i], layer.ys[i]); const d = (px - sx) ** 2 + (py - sy) ** 2;
        if (d <= r2 && (!best || d < best.d)) best = { d, catalog: layer.name, row: i };
      }
    }
    return best;
  }
  function valueAt(x, y) {
    const info = state.info; if (!info) return null;
    const i = Math.floor(x + 0.5), j = Math.floor(y + 0.5);
    if (i < 0 || j < 0 || i >= info.nx || j >= info.ny) return null;
    for (let L = 0; L < info.n_levels; L++) {
      const f = 2 ** L, li = Math.floor((x + 0.5) / f), lj = Math.floor((y + 0.5) / f), ts = info.tile_size;
      const tile = state.tiles.get(`${L}/${Math.floor(li / ts)}/${Math.floor(lj / ts)}`);
      if (tile) {
        const k = (lj % ts) * tile.w + (li % ts);
        return { i, j, v: tile.data[k], m: tile.mask ? tile.mask[k] : 0, exact: L === 0 };
      }
    }
    return { i, j, v: NaN, m: 0, exact: false };
  }
  function sky(x, y) {
    const w = state.wcs; if (!w) return null;
    const n = w.n, gx = (x + 0.5) / state.info.nx * (n - 1), gy = (y + 0.5) / state.info.ny * (n - 1);
    const i = Math.min(Math.max(Math.floor(gx), 0), n - 2), j = Math.min(Math.max(Math.floor(gy), 0), n - 2);
    const fx = gx - i, fy = gy - j, v = [0, 0, 0];
    for (const [di, dj, wgt] of [[0, 0, (1 - fx) * (1 - fy)], [1, 0, fx * (1 - fy)], [0, 1, (1 - fx) * fy], [1, 1, fx * fy]]) {
      const k = 3 * ((j + dj) * n + (i + di)); for (let c = 0; c < 3; c++) v[c] += wgt * w.grid[k + c];
    }
    const lon = (Math.atan2(v[1], v[0]) * 180 / Math.PI + 360) % 360;
    const lat = Math.atan2(v[2], Math.hypot(v[0], v[1])) * 180 / Math.PI;
    return { lon, lat };
  }
  function updateReadout(ev) {
    const p = imageAt(ev); const val = valueAt(p.x, p.y);
    if (!val) { readout.textContent = ""; return; }
    let text = `x ${val.i} y ${val.j}  value ${Number.isNaN(val.v) ? "…" : (val.exact ? "" : "~") + val.v.toPrecision(6)}`;
    const s = sky(p.x, p.y);
    if (s) {
      const [a, b] = state.wcs.names;
      text += state.wcs.sexa ? `  ${a} ${sexagesimal(s.lon, true)} ${b} ${sexagesimal(s.lat, false)}` : "";
      text += `  (${s.lon.toFixed(6)}°, ${s.lat >= 0 ? "+" : ""}${s.lat.toFixed(6)}°)`;
    }
    if (val.m) {
      const names = (model.get("_masks").planes || []).filter(p => (val.m >> p.bit) & 1).map(p => p.name);
      text += `  mask ${names.join(",") || val.m}`;
    }
    readout.textContent = text; // textContent: header/catalog text is never parsed as HTML
  }

  let drag = null;
  const onDown = ev => { stage.focus(); drag = { x: ev.clientX, y: ev.clientY, cx: state.cx, cy: state.cy, moved: false }; };
  const onMove = ev => {
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
      if (drag.moved) { state.cx = drag.cx - dx / state.zoom; state.cy = drag.cy + dy / state.zoom; viewportChanged(); }
      return;
    }
    updateReadout(ev);
    const p = imageAt(ev); const hit = nearestMarker(p.sx, p.sy);
    if (hit) {
      if (!state.hover || state.hover.row !== hit.row || state.hover.catalog !== hit.catalog) {
        state.hover = hit; model.send({ type: "hover", catalog: hit.catalog, row: hit.row });
      }
      tip.style.left = `${p.sx + 12}px`; tip.style.top = `${p.sy + 12}px`;
    } else if (state.hover) { state.hover = null; tip.style.display = "none"; }
  };
  const onUp = ev => {
    if (drag && !drag.moved) {
      const p = imageAt(ev); const hit = nearestMarker(p.sx, p.sy);
      if (hit) {
        const rows = ev.shiftKey && state.selectedCatalog === hit.catalog ? [...state.selected] : [];
        if (!rows.includes(hit.row)) rows.push(hit.row);
        state.selected = new Set(rows); state.selectedCatalog = hit.catalog;
        model.set("selection", { catalog: hit.catalog, rows }); model.save_changes();
        state.overlayDirty = true; schedule();
      }
    }
    drag = null;
  };
  const onWheel = ev => {
    ev.preventDefault(); const p = imageAt(ev);
    const factor = Math.exp(-ev.deltaY * (ev.ctrlKey ? 0.01 : 0.002)); zoomAbout(factor, p.sx, p.sy);
  };
  const onKey = ev => {
    const step = 50 / state.zoom; let used = true;
    if (ev.key === "ArrowLeft") state.cx -= step; else if (ev.key === "ArrowRight") state.cx += step;
    else if (ev.key === "ArrowUp") state.cy += step; else if (ev.key === "ArrowDown") state.cy -= step;
    else if (ev.key === "+" || ev.key === "=") { zoomAbout(2, state.W / 2, state.H / 2); return ev.preventDefault(); }
    else if (ev.key === "-") { zoomAbout(0.5, state.W / 2, state.H / 2); return ev.preventDefault(); }
    else if (ev.key === "f") { fit(); return ev.preventDefault(); }
    else if (ev.key === "1") { zoomAbout(1 / state.zoom, state.W / 2, state.H / 2); return ev.preventDefault(); }
    else used = false;
    if (used) { ev.preventDefault(); viewportChanged(); }
  };
  stage.addEventListener("mousedown", onDown); window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp); stage.addEventListener("wheel", onWheel, { passive: false });
  stage.addEventListener("keydown", onKey);
  stage.addEventListener("mouseleave", () => { tip.style.display = "none"; state.hover = null; });
  fitButton.addEventListener("click", fit);
  oneButton.addEventListener("click", () => zoomAbout(1 / state.zoom, state.W / 2, state.H / 2));

  const handlers = [
    ["change:width change:height", size], ["change:_image", loadImage], ["change:_display", loadDisplay],
    ["change:_masks", loadMasks], ["change:_viewport", loadViewport], ["change:_layers change:selection", loadLayers],
    ["msg:custom", onMessage],
  ];
  for (const [name, fn] of handlers) model.on(name, fn);
  size(); loadImage(); loadDisplay(); loadMasks(); loadViewport(); loadLayers();
  return () => {
    for (const [name, fn] of handlers) model.off(name, fn);
    window.removeEventListener("mousemove", onMove); window.removeEventListener("mouseup", onUp);
    clearTimeout(sendTimer); clearTimeout(overlayTimer); clearTimeout(prefetchTimer);
  };
}

export default { render };
