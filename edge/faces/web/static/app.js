// The live view: polls /api/state and /api/timeline, refreshes each camera's frame a few times a second,
// draws the score timeline with its threshold line, and sends threshold changes (same path as MQTT).
"use strict";
const FRAME_MS = 300, STATE_MS = 1000;
const tiles = {};
let timelineS = 300;
const timeline = {};

function el(tile, cls) { return tile.querySelector("." + cls); }

function makeTile(name) {
  const node = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  node.id = "cam-" + name;
  el(node, "name").textContent = name;
  el(node, "setthr").addEventListener("submit", (ev) => { ev.preventDefault(); setThreshold(name, node); });
  document.getElementById("cameras").appendChild(node);
  const img = el(node, "frame");
  const refresh = () => { img.src = "/cam/" + encodeURIComponent(name) + "/frame.jpg?t=" + Date.now(); };
  img.addEventListener("load", () => setTimeout(refresh, FRAME_MS));
  img.addEventListener("error", () => setTimeout(refresh, 1000));
  refresh();
  return node;
}

function fmt(x, digits) { return (x === null || x === undefined) ? "–" : Number(x).toFixed(digits); }

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
    const last = cam.last;
    if (last) {
      el(tile, "score").textContent = fmt(last.score, 3);
      const v = el(tile, "verdict");
      v.textContent = last.verdict + (last.regions ? " (" + last.regions + " region(s))" : "");
      v.className = "verdict " + last.verdict;
      el(tile, "model").textContent = last.model.id + " · " + last.model.precision + " · " + last.model.backend;
      el(tile, "rate").textContent = fmt(cam.fps, 1) + " fps · " + fmt(last.latency_ms, 1) + " ms";
    }
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

async function getJson(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.reload(); throw new Error("logged out"); }
  return r.json();
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

poll();
