// Motion-track sketcher for gr.HTML (js_on_load). Gradio gives: element, props, trigger, watch.
// State = props.value: a JSON string in the studio track format
//   {"format": "ic-lora-studio/tracks", "version": 1, "width", "height", "frames", "fps", "tracks": [{"points": [{x, y, frame?}]}]}
// with coordinates in pixels of the background image. Python pushes the background as props.background (a data
// URL) and a new value on import / extract; the sketcher sets props.value and triggers 'change' after each edit.
const COLOURS = ["#f97316", "#3b82f6", "#22c55e", "#e11d48", "#a855f7", "#eab308", "#06b6d4", "#ec4899"];
const HIT = 9;            // px (display) to grab a point
const canvas = element.querySelector(".tk-canvas");
const g = canvas.getContext("2d");
const stage = element.querySelector(".tk-stage");
const chips = element.querySelector(".tk-chips");
const info = element.querySelector(".tk-info");
const frameSlider = element.querySelector(".tk-frame");
const frameLabel = element.querySelector(".tk-frame-label");
const timedBox = element.querySelector(".tk-timed");
const staticBtn = element.querySelector('[data-act="static"]');

let ts = null;            // the track set (tracks may hold an empty track while drawing)
let cur = 0;              // current track index
let sel = null;           // {t, p} selected point
let drag = null;          // {t, p} while dragging
let staticMode = false;   // each click makes a new 1-point track
let lastSent = null;
let bg = null;            // HTMLImageElement of the background
let bgSrc = null;

function parse(text) {
  let obj = null;
  try { obj = text ? JSON.parse(text) : null; } catch (e) { obj = null; }
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) obj = {};
  obj.format = "ic-lora-studio/tracks"; obj.version = obj.version || 1;
  obj.width = obj.width || 768; obj.height = obj.height || 512;
  obj.frames = obj.frames || 121; obj.fps = obj.fps || 24;
  obj.tracks = Array.isArray(obj.tracks) ? obj.tracks.filter(t => t && Array.isArray(t.points)) : [];
  return obj;
}

function serialise() {
  const out = Object.assign({}, ts, {tracks: ts.tracks.filter(t => t.points.length > 0).map(t => {
    const d = {}; if (t.name) d.name = t.name;
    d.points = t.points.map(p => { const q = {x: Math.round(p.x * 10) / 10, y: Math.round(p.y * 10) / 10};
                                   if (p.frame !== undefined && p.frame !== null) q.frame = p.frame; return q; });
    return d; })});
  return JSON.stringify(out);
}

function commit() {
  const text = serialise();
  if (text === lastSent) return;
  lastSent = text;
  props.value = text;
  trigger("change");
}

function load(text) {
  if (text && text === lastSent) return;
  ts = parse(text);
  lastSent = serialise();
  cur = Math.max(0, ts.tracks.length - 1); sel = null; drag = null;
  layout();
}

function loadBackground() {
  const src = props.background || "";
  if (src === bgSrc) return;
  bgSrc = src; bg = null;
  if (!src) { layout(); return; }
  const img = new Image();
  img.onload = () => { if (bgSrc === src) { bg = img; layout(); } };
  img.src = src;
}

// ----------------------------------------------------------------- geometry
function scale() { return canvas.width / ts.width; }
function toImage(ev) {
  const r = canvas.getBoundingClientRect();
  const s = ts.width / r.width;
  return {x: Math.min(ts.width, Math.max(0, (ev.clientX - r.left) * s)),
          y: Math.min(ts.height, Math.max(0, (ev.clientY - r.top) * s))};
}

function layout() {
  if (!ts) return;
  const maxW = Math.max(200, stage.clientWidth || 640);
  const maxH = 560;
  let w = maxW, h = w * ts.height / ts.width;
  if (h > maxH) { h = maxH; w = h * ts.width / ts.height; }
  canvas.style.width = Math.round(w) + "px"; canvas.style.height = Math.round(h) + "px";
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  draw();
}

function crPoint(p0, p1, p2, p3, t) {
  const t2 = t * t, t3 = t2 * t;
  const f = (a, b, c, d) => 0.5 * (2 * b + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t2 + (-a + 3 * b - 3 * c + d) * t3);
  return {x: f(p0.x, p1.x, p2.x, p3.x), y: f(p0.y, p1.y, p2.y, p3.y)};
}
function segPoint(pts, i, t) {
  const n = pts.length;
  return crPoint(pts[Math.max(0, i - 1)], pts[i], pts[Math.min(n - 1, i + 1)], pts[Math.min(n - 1, i + 2)], t);
}

// ----------------------------------------------------------------- drawing
function draw() {
  const s = scale();
  const dpr = window.devicePixelRatio || 1;
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.fillStyle = "#111827"; g.fillRect(0, 0, canvas.width, canvas.height);
  if (bg) g.drawImage(bg, 0, 0, canvas.width, canvas.height);
  else {
    g.strokeStyle = "rgba(255,255,255,0.07)"; g.lineWidth = 1;
    const step = 32 * dpr;
    for (let x = 0; x < canvas.width; x += step) { g.beginPath(); g.moveTo(x, 0); g.lineTo(x, canvas.height); g.stroke(); }
    for (let y = 0; y < canvas.height; y += step) { g.beginPath(); g.moveTo(0, y); g.lineTo(canvas.width, y); g.stroke(); }
    if (!ts.tracks.length) {  // the hint only while there is nothing drawn (it would sit over the tracks)
      g.fillStyle = "rgba(255,255,255,0.45)"; g.font = `${14 * dpr}px sans-serif`; g.textAlign = "center";
      g.fillText("blank canvas: load an image or a video frame, or just draw", canvas.width / 2, canvas.height / 2);
    }
  }
  ts.tracks.forEach((tr, k) => {
    const col = COLOURS[k % COLOURS.length];
    const pts = tr.points.map(p => ({x: p.x * s, y: p.y * s, frame: p.frame}));
    if (pts.length > 1) {
      g.strokeStyle = "rgba(0,0,0,0.55)"; g.lineWidth = 5 * dpr; g.lineJoin = "round"; g.lineCap = "round";
      const path = () => { g.beginPath(); g.moveTo(pts[0].x, pts[0].y);
        for (let i = 0; i < pts.length - 1; i++) for (let j = 1; j <= 16; j++) { const q = segPoint(pts, i, j / 16); g.lineTo(q.x, q.y); }
      };
      path(); g.stroke();
      g.strokeStyle = col; g.lineWidth = (k === cur ? 3 : 2) * dpr; path(); g.stroke();
      // arrow head at the end
      const a = pts[pts.length - 1], b = segPoint(pts, pts.length - 2, 0.9);
      const ang = Math.atan2(a.y - b.y, a.x - b.x), L = 12 * dpr;
      g.fillStyle = col; g.beginPath(); g.moveTo(a.x, a.y);
      g.lineTo(a.x - L * Math.cos(ang - 0.45), a.y - L * Math.sin(ang - 0.45));
      g.lineTo(a.x - L * Math.cos(ang + 0.45), a.y - L * Math.sin(ang + 0.45)); g.closePath(); g.fill();
    }
    pts.forEach((p, i) => {
      const isSel = sel && sel.t === k && sel.p === i;
      const r = (isSel ? 8 : (pts.length === 1 ? 7 : 5.5)) * dpr;
      g.beginPath(); g.arc(p.x, p.y, r, 0, 2 * Math.PI);
      g.fillStyle = col; g.fill();
      g.lineWidth = (isSel ? 3 : 1.5) * dpr; g.strokeStyle = isSel ? "#ffffff" : "rgba(0,0,0,0.8)"; g.stroke();
      if (pts.length === 1) { g.beginPath(); g.arc(p.x, p.y, r + 5 * dpr, 0, 2 * Math.PI); g.strokeStyle = col; g.lineWidth = 1.5 * dpr; g.stroke(); }
      if (p.frame !== undefined && p.frame !== null) {
        g.font = `${11 * dpr}px sans-serif`; g.textAlign = "left";
        const label = "f" + p.frame; const tx = p.x + r + 3 * dpr, ty = p.y - r;
        g.fillStyle = "rgba(0,0,0,0.65)"; g.fillRect(tx - 2 * dpr, ty - 10 * dpr, g.measureText(label).width + 4 * dpr, 13 * dpr);
        g.fillStyle = "#fff"; g.fillText(label, tx, ty);
      }
    });
  });
  renderChrome();
}

function renderChrome() {
  chips.innerHTML = "";
  ts.tracks.forEach((tr, k) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "tk-chip" + (k === cur ? " active" : "");
    b.style.setProperty("--c", COLOURS[k % COLOURS.length]);
    const kind = tr.points.length === 1 ? "static" : `${tr.points.length} pts`;
    b.textContent = `Track ${k + 1} · ${kind}${tr.points.length && tr.points[0].frame != null ? " · timed" : ""}`;
    b.addEventListener("click", () => { cur = k; sel = null; staticMode = false; draw(); });
    chips.appendChild(b);
  });
  const n = ts.tracks.filter(t => t.points.length).length;
  const np = ts.tracks.reduce((a, t) => a + t.points.length, 0);
  info.textContent = `${n} track${n === 1 ? "" : "s"}, ${np} point${np === 1 ? "" : "s"} · canvas ${ts.width}×${ts.height} px · ${ts.frames} frames @ ${ts.fps} fps`;
  const tr = ts.tracks[cur];
  const timed = !!(tr && tr.points.length && tr.points[0].frame != null);
  timedBox.checked = timed;
  frameSlider.max = String(Math.max(0, ts.frames - 1));
  const p = sel && ts.tracks[sel.t] ? ts.tracks[sel.t].points[sel.p] : null;
  frameSlider.disabled = !(p && p.frame != null);
  if (p && p.frame != null) { frameSlider.value = String(p.frame); frameLabel.textContent = `point ${sel.p + 1} at frame ${p.frame}`; }
  else frameLabel.textContent = timed ? "select a point to set its frame" : "untimed: equal time per segment";
  staticBtn.classList.toggle("active", staticMode);
}

// ----------------------------------------------------------------- editing
function hit(pt) {
  const s = scale() / (window.devicePixelRatio || 1);
  let best = null, bestD = HIT;
  ts.tracks.forEach((tr, k) => tr.points.forEach((p, i) => {
    const d = Math.hypot((p.x - pt.x) * s, (p.y - pt.y) * s);
    if (d <= bestD) { best = {t: k, p: i}; bestD = d; }
  }));
  return best;
}

function retime(tr) {  // spread frames evenly over the clip
  const n = tr.points.length, last = ts.frames - 1;
  tr.points.forEach((p, i) => { p.frame = n === 1 ? 0 : Math.round(i * last / (n - 1)); });
  for (let i = 1; i < n; i++) if (tr.points[i].frame <= tr.points[i - 1].frame) { retimeFail(tr); return; }
}
function retimeFail(tr) { tr.points.forEach(p => { delete p.frame; }); }

function currentTrack() {
  if (!ts.tracks.length) ts.tracks.push({points: []});
  cur = Math.min(cur, ts.tracks.length - 1);
  return ts.tracks[cur];
}

function addPoint(pt) {
  if (staticMode) {
    ts.tracks = ts.tracks.filter(t => t.points.length);
    ts.tracks.push({points: [{x: pt.x, y: pt.y}]});
    cur = ts.tracks.length - 1; sel = {t: cur, p: 0};
    return;
  }
  const tr = currentTrack();
  const timed = tr.points.length && tr.points[0].frame != null;
  tr.points.push({x: pt.x, y: pt.y});
  if (timed) {
    const prev = tr.points[tr.points.length - 2].frame;
    const step = Math.max(1, Math.round((ts.frames - 1) / 8));
    if (prev + 1 <= ts.frames - 1) tr.points[tr.points.length - 1].frame = Math.min(ts.frames - 1, prev + step);
    else retime(tr);
  }
  sel = {t: cur, p: tr.points.length - 1};
}

function deletePoint() {
  if (!sel) return;
  const tr = ts.tracks[sel.t];
  tr.points.splice(sel.p, 1);
  if (!tr.points.length) { ts.tracks.splice(sel.t, 1); cur = Math.max(0, Math.min(cur, ts.tracks.length - 1)); }
  sel = null;
}

function subdivide() {
  const tr = ts.tracks[cur];
  if (!tr || tr.points.length < 2) return;
  const pts = tr.points, out = [];
  for (let i = 0; i < pts.length; i++) {
    out.push(pts[i]);
    if (i < pts.length - 1) {
      const m = segPoint(pts, i, 0.5);
      const q = {x: Math.round(m.x * 10) / 10, y: Math.round(m.y * 10) / 10};
      if (pts[i].frame != null) {
        const f = Math.floor((pts[i].frame + pts[i + 1].frame) / 2);
        if (f <= pts[i].frame || f >= pts[i + 1].frame) continue;  // no room in time: keep the segment
        q.frame = f;
      }
      out.push(q);
    }
  }
  tr.points = out; sel = null;
}

element.querySelector(".tk-toolbar").addEventListener("click", ev => {
  const b = ev.target.closest("[data-act]");
  if (!b) return;
  const act = b.dataset.act;
  if (act === "new") { ts.tracks = ts.tracks.filter(t => t.points.length); ts.tracks.push({points: []}); cur = ts.tracks.length - 1; sel = null; staticMode = false; }
  else if (act === "static") { staticMode = !staticMode; }
  else if (act === "subdivide") subdivide();
  else if (act === "del-point") deletePoint();
  else if (act === "del-track") { if (ts.tracks[cur]) { ts.tracks.splice(cur, 1); cur = Math.max(0, cur - 1); sel = null; } }
  else if (act === "clear") { ts.tracks = []; cur = 0; sel = null; }
  draw(); commit();
});

timedBox.addEventListener("change", () => {
  const tr = ts.tracks[cur];
  if (!tr || !tr.points.length) { timedBox.checked = false; return; }
  if (timedBox.checked) retime(tr); else retimeFail(tr);
  draw(); commit();
});

frameSlider.addEventListener("input", () => {
  if (!sel) return;
  const pts = ts.tracks[sel.t].points, p = pts[sel.p];
  if (p.frame == null) return;
  const lo = sel.p > 0 ? pts[sel.p - 1].frame + 1 : 0;
  const hi = sel.p < pts.length - 1 ? pts[sel.p + 1].frame - 1 : ts.frames - 1;
  p.frame = Math.max(lo, Math.min(hi, parseInt(frameSlider.value, 10)));
  draw();
});
frameSlider.addEventListener("change", () => commit());

canvas.addEventListener("contextmenu", ev => {
  ev.preventDefault();
  const h = hit(toImage(ev));
  if (h) { sel = h; deletePoint(); draw(); commit(); }
});
canvas.addEventListener("pointerdown", ev => {
  if (ev.button !== 0) return;
  canvas.focus();
  const pt = toImage(ev);
  const h = hit(pt);
  if (h) { sel = h; cur = h.t; drag = h; canvas.setPointerCapture(ev.pointerId); }
  else { addPoint(pt); commit(); }
  draw();
});
canvas.addEventListener("pointermove", ev => {
  if (!drag) { canvas.style.cursor = hit(toImage(ev)) ? "grab" : "crosshair"; return; }
  const pt = toImage(ev);
  const p = ts.tracks[drag.t].points[drag.p];
  p.x = pt.x; p.y = pt.y; draw();
});
const endDrag = () => { if (drag) { drag = null; commit(); } };
canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);
canvas.addEventListener("keydown", ev => {
  if ((ev.key === "Delete" || ev.key === "Backspace") && sel) { ev.preventDefault(); deletePoint(); draw(); commit(); }
});

if (window.ResizeObserver) new ResizeObserver(() => { if (ts) layout(); }).observe(stage);
watch("value", () => load(props.value));
watch("background", () => loadBackground());
load(props.value);
loadBackground();
