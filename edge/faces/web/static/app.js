// The live view: polls /api/state and /api/timeline, shows each camera's newest frame a few times a second
// (picture, mask overlay, region boxes and the result's fields all from one snapshot, so they always belong to
// the same frame), draws the score timeline with its threshold line, lists the evidence store's latest
// anomalous frames, and sends threshold changes (same path as MQTT).
"use strict";
const FRAME_MS = 250, STATE_MS = 1000, EVIDENCE_MS = 5000;
const tiles = {};
let timelineS = 300;
const timeline = {};

function el(node, cls) { return node.querySelector("." + cls); }
function fmt(x, digits) { return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits); }
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

async function getJson(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.reload(); throw new Error("logged out"); }
  if (!r.ok) { const e = new Error("HTTP " + r.status); e.status = r.status; throw e; }
  return r.json();
}

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

// Lays ``picture`` (and ``overlay``, an RGBA PNG of the same size, or null) into a .view box, with the region
// boxes (camera pixels of a width x height frame) on a canvas of their own.
function showView(view, picture, overlay, boxes, width, height) {
  picture.className = "frame";
  picture.alt = "frame with its defect mask";
  el(view, "frame").replaceWith(picture);
  const mask = el(view, "mask");
  mask.width = picture.naturalWidth; mask.height = picture.naturalHeight;
  const mctx = mask.getContext("2d");
  mctx.clearRect(0, 0, mask.width, mask.height);
  if (overlay) { mctx.drawImage(overlay, 0, 0, mask.width, mask.height); }
  const regions = el(view, "regions");
  regions.width = picture.naturalWidth; regions.height = picture.naturalHeight;
  const rctx = regions.getContext("2d");
  rctx.clearRect(0, 0, regions.width, regions.height);
  rctx.strokeStyle = "#ffff00"; rctx.lineWidth = Math.max(1, regions.width / 400);
  const sx = regions.width / width, sy = regions.height / height;
  for (const b of boxes || []) { rctx.strokeRect(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy); }
}

function makeTile(name) {
  const node = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  node.id = "cam-" + name;
  el(node, "name").textContent = name;
  el(node, "setthr").addEventListener("submit", (ev) => { ev.preventDefault(); setThreshold(name, node); });
  document.getElementById("cameras").appendChild(node);
  frameLoop(name, node);
  return node;
}

// The newest snapshot, when it is a new frame: its picture and overlay are loaded first, then the picture,
// the overlay and the text change in one step.
async function frameLoop(name, tile) {
  const url = "/cam/" + encodeURIComponent(name) + "/latest";
  let shown = null;
  for (;;) {
    let wait = FRAME_MS;
    try {
      const snap = await getJson(url);
      if (snap.frame_id !== shown) {
        const [picture, overlay] = await Promise.all([
          loadImage(snap.image), snap.mask ? loadImage(snap.mask) : Promise.resolve(null),
        ]);
        showSnapshot(tile, snap, picture, overlay);
        shown = snap.frame_id;
      }
    } catch (e) {
      wait = 1000;  // no frame yet, or the snapshot was replaced while loading: ask again
    }
    await sleep(wait);
  }
}

function showSnapshot(tile, snap, picture, overlay) {
  const view = el(tile, "view");
  showView(view, picture, overlay, snap.boxes, snap.width, snap.height);
  view.dataset.frameId = String(snap.frame_id);
  el(tile, "frameid").textContent = snap.frame_id + " · " + (snap.time || "").replace("T", " ");
  el(tile, "score").textContent = fmt(snap.score, 3) + " / threshold " + fmt(snap.threshold, 3);
  const v = el(tile, "verdict");
  v.textContent = snap.verdict + (snap.regions ? " (" + snap.regions + " region(s))" : "");
  v.className = "verdict " + snap.verdict;
  el(tile, "model").textContent = snap.model.id + " · " + snap.model.precision + " · " + snap.model.backend;
  el(tile, "latency").textContent = fmt(snap.latency_ms, 1) + " ms";
}

function showState(doc) {
  timelineS = doc.timeline_s;
  for (const [name, cam] of Object.entries(doc.cameras)) {
    const tile = tiles[name] || (tiles[name] = makeTile(name));
    const st = el(tile, "camstate");
    st.textContent = cam.state.state + (cam.state.reason ? " (" + cam.state.reason + ")" : "");
    st.className = "camstate " + cam.state.state;
    const thr = cam.threshold;
    el(tile, "threshold").textContent = fmt(thr.threshold, 3) + " (" + thr.source + ", range " +
      fmt(thr.range[0], 2) + "–" + fmt(thr.range[1], 2) + ")";
    el(tile, "source").textContent = cam.source;
    el(tile, "rate").textContent = fmt(cam.fps, 1);
    const body = el(tile, "hours").tBodies[0];
    body.textContent = "";
    for (const h of cam.hours.slice(-6)) {
      const row = body.insertRow();
      const hour = new Date(h.hour * 1000).toISOString().slice(0, 13).replace("T", " ") + ":00";
      for (const text of [hour, h.ok, h.warn, h.ng]) { row.insertCell().textContent = text; }
    }
  }
}

function drawTimeline(name) {
  const tile = tiles[name];
  const points = timeline[name] || [];
  if (!tile) { return; }
  const canvas = el(tile, "timeline");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (!points.length) { return; }
  const t1 = points[points.length - 1][0];
  const span = Math.min(timelineS, Math.max(30, t1 - points[0][0])), t0 = t1 - span;
  let top = -Infinity, bottom = Infinity;
  for (const p of points) { top = Math.max(top, p[1], p[2]); bottom = Math.min(bottom, p[1], p[2]); }
  const pad = (top - bottom) * 0.1 || 1;
  top += pad; bottom -= pad;
  const x = (t) => (t - t0) / span * w, y = (v) => h - (v - bottom) / (top - bottom) * h;
  ctx.strokeStyle = "#ffd24a"; ctx.beginPath();
  points.forEach((p, i) => { i ? ctx.lineTo(x(p[0]), y(p[2])) : ctx.moveTo(x(p[0]), y(p[2])); });
  ctx.stroke();
  ctx.strokeStyle = "#6cb6ff"; ctx.beginPath();
  points.forEach((p, i) => { i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1])); });
  ctx.stroke();
  ctx.fillStyle = "#ff5a5a";
  for (const p of points) { if (p[3]) { ctx.fillRect(x(p[0]) - 1, y(p[1]) - 1, 3, 3); } }
  canvas.dataset.points = String(points.length);
  canvas.dataset.last = String(t1);
}

async function poll() {
  try {
    showState(await getJson("/api/state"));
    const doc = await getJson("/api/timeline");
    for (const [name, points] of Object.entries(doc.cameras)) { timeline[name] = points; drawTimeline(name); }
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("status").textContent = "no answer from the station (" + e.message + ")";
  }
  setTimeout(poll, STATE_MS);
}

// The evidence store's latest anomalous frames as thumbnails; a click opens the frame full size with its mask.
async function pollEvidence() {
  const box = document.getElementById("evidence");
  try {
    const doc = await getJson("/api/evidence");
    box.hidden = !doc.enabled;
    const list = el(box, "thumbs");
    const ids = doc.items.map((item) => String(item.id)).join(",");
    if (list.dataset.ids !== ids) {
      list.textContent = "";
      for (const item of doc.items) { list.appendChild(thumb(item)); }
      list.dataset.ids = ids;
    }
  } catch (e) { /* the station is unreachable: poll() says so */ }
  setTimeout(pollEvidence, EVIDENCE_MS);
}

function thumb(item) {
  const button = document.createElement("button");
  button.className = "thumb";
  button.dataset.id = String(item.id);
  const img = document.createElement("img");
  img.src = item.thumb;
  img.alt = item.camera + " frame " + item.frame_id;
  const caption = document.createElement("span");
  caption.textContent = item.camera + " · " + fmt(item.score, 2) + " · " + item.time.slice(11, 19);
  button.append(img, caption);
  button.addEventListener("click", () => openEvidence(item));
  return button;
}

async function openEvidence(item) {
  const dialog = document.getElementById("full");
  const [picture, overlay] = await Promise.all([
    loadImage(item.image), item.mask ? loadImage(item.mask) : Promise.resolve(null),
  ]);
  const view = el(dialog, "view");
  showView(view, picture, overlay, item.boxes, item.width, item.height);
  view.dataset.id = String(item.id);
  el(dialog, "caption").textContent = item.camera + " · frame " + item.frame_id + " · " +
    item.time.replace("T", " ") + " · score " + fmt(item.score, 3) + " / threshold " + fmt(item.threshold, 3);
  if (!dialog.open) { dialog.showModal(); }
}

async function setThreshold(name, tile) {
  const input = el(tile, "setthr").elements.threshold;
  const answer = el(tile, "answer");
  const r = await fetch("/api/threshold/" + encodeURIComponent(name), {
    method: "POST", credentials: "same-origin", body: input.value.trim(),
    headers: { "Content-Type": "text/plain", "X-Edge-Request": "1" },
  });
  const doc = await r.json();
  answer.textContent = r.ok ? "applied: " + fmt(doc.threshold, 3) : "refused: " + (doc.error || r.status);
}

document.getElementById("close").addEventListener("click", () => document.getElementById("full").close());
poll();
pollEvidence();
