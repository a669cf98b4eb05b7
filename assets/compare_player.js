// Side-by-side player for gr.HTML (js_on_load): several videos, ONE scrubber, one play button, labels.
// props.value is a JSON string {"items": [{"url", "label"}], "fps", "frames", "columns"} pushed by Python.
// The first video is the clock: while playing, the others are pulled to its time whenever they drift by more
// than half a frame; the scrubber seeks every video to the middle of the same frame. The current frame is
// written to the root's data-frame attribute (tests read it), and each video's to its own data-frame.
const grid = element.querySelector(".cp-grid");
const slider = element.querySelector(".cp-scrub");
const label = element.querySelector(".cp-frame");
const playBtn = element.querySelector(".cp-play");
const root = element.querySelector(".cp-wrap");
let vids = [];
let fps = 24, frames = 1, playing = false, raf = null, lastValue = null;

function parse(text) {
  try { const v = typeof text === "string" ? JSON.parse(text || "{}") : (text || {}); return v || {}; }
  catch (e) { return {}; }
}

function frameOf(t) { return Math.max(0, Math.min(frames - 1, Math.floor(t * fps + 1e-6))); }

function show(f) {
  slider.value = String(f);
  label.textContent = `frame ${f + 1} / ${frames}`;
  root.dataset.frame = String(f);
  vids.forEach(v => { v.dataset.frame = String(frameOf(v.currentTime)); });
}

function seek(f) {
  const t = (f + 0.5) / fps;
  vids.forEach(v => { try { v.currentTime = t; } catch (e) {} });
  show(f);
}

function tick() {
  if (!playing || !vids.length) return;
  const master = vids[0];
  const t = master.currentTime;
  vids.slice(1).forEach(v => { if (Math.abs(v.currentTime - t) > 0.5 / fps) { try { v.currentTime = t; } catch (e) {} } });
  show(frameOf(t));
  if (master.ended) { stop(); return; }
  raf = requestAnimationFrame(tick);
}

function play() {
  if (!vids.length) return;
  if (frameOf(vids[0].currentTime) >= frames - 1) seek(0);
  playing = true; root.dataset.playing = "1"; playBtn.textContent = "❚❚ Pause";
  vids.forEach(v => { const p = v.play(); if (p && p.catch) p.catch(() => {}); });
  raf = requestAnimationFrame(tick);
}

function stop() {
  playing = false; root.dataset.playing = "0"; playBtn.textContent = "▶ Play";
  vids.forEach(v => v.pause());
  if (raf) cancelAnimationFrame(raf);
  if (vids.length) show(frameOf(vids[0].currentTime));
}

function load(text) {
  if (text === lastValue) return;
  lastValue = text;
  stop();
  const v = parse(text);
  const items = Array.isArray(v.items) ? v.items : [];
  fps = Number(v.fps) > 0 ? Number(v.fps) : 24;
  frames = Math.max(1, Number(v.frames) || 1);
  const cols = Math.max(1, Number(v.columns) || Math.min(items.length || 1, 4));
  grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
  grid.innerHTML = "";
  vids = items.map((it, i) => {
    const fig = document.createElement("figure");
    fig.className = "cp-cell";
    const cap = document.createElement("figcaption");
    cap.textContent = it.label || `video ${i + 1}`;
    const vid = document.createElement("video");
    vid.muted = true; vid.playsInline = true; vid.preload = "auto"; vid.loop = false;
    vid.src = it.url; vid.dataset.index = String(i);
    fig.appendChild(cap); fig.appendChild(vid); grid.appendChild(fig);
    return vid;
  });
  slider.max = String(frames - 1);
  root.dataset.count = String(vids.length);
  root.dataset.ready = "0";
  Promise.all(vids.map(vd => new Promise(res => {
    if (vd.readyState >= 2) return res();
    vd.addEventListener("loadeddata", () => res(), {once: true});
    vd.addEventListener("error", () => res(), {once: true});
  }))).then(() => { root.dataset.ready = "1"; seek(0); });
  element.querySelector(".cp-empty").style.display = vids.length ? "none" : "";
  show(0);
}

slider.addEventListener("input", () => { if (playing) stop(); seek(Number(slider.value)); });
playBtn.addEventListener("click", () => (playing ? stop() : play()));
element.querySelector(".cp-prev").addEventListener("click", () => { stop(); seek(Math.max(0, Number(slider.value) - 1)); });
element.querySelector(".cp-next").addEventListener("click", () => { stop(); seek(Math.min(frames - 1, Number(slider.value) + 1)); });

watch("value", () => load(props.value));
load(props.value);
