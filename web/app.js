// The page: connect, build the controls from /api/avatar, send changes over the data channel (from
// the sliders, or from the user's face: web/camera-drive.js), show stats, and measure latency with
// the probe: motion-to-photon for every control, camera-to-avatar for the camera's.
import { connectAvatar } from "/web/avatar-client.js";
import { probeReader } from "/web/probe.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const GROUPS = [
  ["jaw and mouth", (n) => /^(jaw|mouth|tongue)/.test(n)],
  ["eyes", (n) => n.startsWith("eye")],
  ["brows", (n) => n.startsWith("brow")],
  ["cheeks and nose", (n) => /^(cheek|nose)/.test(n)],
];
// Each preset sets its own names; the rest go back to the avatar's resting expression.
const PRESETS = {
  rest: {},
  smile: { mouthSmileLeft: 1, mouthSmileRight: 1, cheekSquintLeft: 0.3, cheekSquintRight: 0.3 },
  surprise: { jawOpen: 0.6, browInnerUp: 1, browOuterUpLeft: 0.8, browOuterUpRight: 0.8, eyeWideLeft: 0.8, eyeWideRight: 0.8 },
};

let avatar = null;
let info = null;
const sliders = new Map(); // "expression.jawOpen" / "pose.yaw" -> input
let pending = null; // fields changed since the last send
let animation = null; // "talking" | "idle" | null
const mtp = []; // {seq, ms}
const shownSeqs = new Set();
let frames = 0;
let lastStats = {};
let rtt = null;
const rtts = []; // recent data-channel round trips (ms)
let newPictures = 0; // displayed frames that show a new picture (a new probe seq)
let lastShownSeq = null;
let testRun = null;
let drive = null; // the camera driving the avatar, while it does
let cameraStream = null;
const camera = []; // camera-to-avatar samples: {seq, total, tracking, send, server, rest}

function queue(group, name, value) {
  pending = pending || {};
  pending[group] = pending[group] || {};
  pending[group][name] = value;
}

// Controls go out at most once per animation frame: the newest state wins.
function flush() {
  if (pending && avatar) avatar.setControls(pending);
  pending = null;
}

function slider(parent, group, name, min, max, step, value, inert = false) {
  const label = document.createElement("label");
  if (inert) label.className = "inert";
  const input = Object.assign(document.createElement("input"), { type: "range", min, max, step, value, disabled: inert });
  const out = document.createElement("output");
  out.textContent = value;
  input.addEventListener("input", () => { out.textContent = input.value; queue(group, name, Number(input.value)); });
  label.append(name, input, out);
  parent.append(label);
  sliders.set(`${group}.${name}`, { input, out });
  return label;
}

// Show a value on its slider without sending it (the camera sends its own controls).
function show(group, name, value) {
  const s = sliders.get(`${group}.${name}`);
  if (!s || s.input.disabled) return;
  s.input.value = value;
  s.out.textContent = Number(value).toFixed(2);
}

function set(group, name, value) {
  const s = sliders.get(`${group}.${name}`);
  if (!s || s.input.disabled) return;
  s.input.value = value;
  s.out.textContent = Number(value).toFixed(2);
  queue(group, name, Number(value));
}

// The avatar's resting weight of an expression (/api/avatar: the median of its training frames).
const rest = (name) => info.rest_expression[name] ?? 0;

function buildControls() {
  const pose = $("pose"), view = $("view");
  for (const [k, [lo, hi]] of Object.entries(info.pose_limits_deg)) slider(pose, "pose", k, lo, hi, 1, 0);
  for (const [k, [lo, hi]] of Object.entries(info.view_limits_deg)) slider(view, "view", k, lo, hi, 1, 0);
  const inert = new Set(info.inert);
  for (const [title, test] of GROUPS) {
    const fs = document.createElement("fieldset");
    fs.innerHTML = `<legend>${title}</legend>`;
    for (const name of info.expression_names.filter(test)) {
      const label = slider(fs, "expression", name, 0, 1, 0.01, rest(name), inert.has(name));
      // Past its limit a score is drawn at the limit: the clip never showed more.
      const held = (info.expression_limits ?? {})[name];
      if (held !== undefined) label.title = `drawn up to ${held}: the avatar's clip went no further`;
    }
    $("expressions").append(fs);
  }
}

function applyPreset(name) {
  animation = name === "talking" ? "talking" : animation === "talking" ? null : animation;
  if (name === "talking") return;
  for (const n of info.expression_names) set("expression", n, PRESETS[name][n] ?? rest(n));
}

function animate(now) {
  const t = now / 1000;
  if (drive) {  // the face drives: no animation, no sweep
    requestAnimationFrame(animate);
    return;
  }
  if (animation === "talking") {
    set("expression", "jawOpen", (0.5 + 0.5 * Math.sin(t * 9)) * 0.6);
    for (const side of ["Left", "Right"]) {  // about the resting smile: some avatars rest smiling
      const name = `mouthSmile${side}`, base = rest(name) || 0.2;
      set("expression", name, Math.max(0, Math.min(1, base + 0.2 * Math.sin(t * 1.3))));
    }
  }
  if ($("idle").checked) {
    set("pose", "yaw", 8 * Math.sin(t * 0.5));
    set("pose", "pitch", 3 * Math.sin(t * 0.37));
    const blink = t % 4 < 0.15;
    set("expression", "eyeBlinkLeft", blink ? 1 : rest("eyeBlinkLeft"));
    set("expression", "eyeBlinkRight", blink ? 1 : rest("eyeBlinkRight"));
  }
  if (testRun && (!testRun.hz || now - testRun.lastSend >= 1000 / testRun.hz - 1)) {
    set("pose", "yaw", 30 * Math.sin(t * 2));
    testRun.lastSend = now;
  }
  flush();
  requestAnimationFrame(animate);
}

// Drag on the video turns the head.
function dragToTurn() {
  let start = null;
  video.addEventListener("pointerdown", (e) => {
    start = { x: e.clientX, y: e.clientY, yaw: Number(sliders.get("pose.yaw").input.value), pitch: Number(sliders.get("pose.pitch").input.value) };
    video.setPointerCapture(e.pointerId);
  });
  video.addEventListener("pointermove", (e) => {
    if (!start) return;
    const [ylo, yhi] = info.pose_limits_deg.yaw, [plo, phi] = info.pose_limits_deg.pitch;
    set("pose", "yaw", Math.max(ylo, Math.min(yhi, start.yaw + (e.clientX - start.x) * 0.3)));
    set("pose", "pitch", Math.max(plo, Math.min(phi, start.pitch + (e.clientY - start.y) * 0.3)));
  });
  video.addEventListener("pointerup", () => { start = null; });
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function onVideoFrame(readSeq) {
  const step = (now, metadata) => {
    frames++;
    const seq = readSeq();
    if (seq !== null && seq !== lastShownSeq) newPictures++;  // repeats of a picture show its seq again
    if (seq !== null) lastShownSeq = seq;
    if (seq !== null && !shownSeqs.has(seq) && avatar.sent.has(seq)) {
      shownSeqs.add(seq);
      const shown = metadata.expectedDisplayTime ?? now;
      const sample = { seq, ms: shown - avatar.sent.get(seq) };
      mtp.push(sample);
      if (mtp.length > 2000) mtp.shift();
      if (testRun) testRun.samples.push(sample);
      const cam = drive?.timings.get(seq);
      if (cam) {
        // The parts: capture -> tracked, tracked -> sent, the server's own control -> picture time
        // (its median), and what is left: encode, network, decode, display.
        const total = shown - cam.capture, tracking = cam.tracked - cam.capture, send = cam.sent - cam.tracked;
        const server = lastStats.latency_ms ?? 0;
        const c = { seq, total, tracking, send, server, rest: total - tracking - send - server, captureKnown: cam.captureKnown };
        camera.push(c);
        if (camera.length > 2000) camera.shift();
        if (testRun) testRun.camera.push(c);
      }
    }
    video.requestVideoFrameCallback(step);
  };
  video.requestVideoFrameCallback(step);
}

let lastCamera = { frames: 0, tracked: 0 };

// Camera-to-avatar samples -> p50/p95 of the whole and the median of each part.
function summarise(samples) {
  if (!samples.length) return null;
  const median = (k) => percentile(samples.map((x) => x[k]), 50);
  return {
    samples: samples.length,
    p50: percentile(samples.map((x) => x.total), 50),
    p95: percentile(samples.map((x) => x.total), 95),
    parts: { tracking: median("tracking"), send: median("send"), server: median("server"), rest: median("rest") },
    capture_time_from_camera: samples.every((x) => x.captureKnown),
  };
}

// The video receiver's cumulative figures (jitter buffer, decode), for per-window averages.
async function inboundVideo(pc) {
  let inbound = null;
  (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
  return inbound;
}

// Where the time from a control's send to its picture's display goes: p50 of every stage. The
// server's stages come from its stats (server/budget.py); network is half the data channel's
// round trip each way; jitter buffer and decode from getStats over the window; display is what is
// left of the motion-to-photon p50 (compositing, waiting for the screen's refresh).
function latencyBudget(mtpP50, before, after) {
  if (mtpP50 === null || !lastStats.budget_ms) return null;
  const half = rtts.length ? percentile(rtts.slice(-30), 50) / 2 : 0;
  const per = (k, n) => (after && before && after[n] > before[n] ? (1000 * (after[k] - before[k])) / (after[n] - before[n]) : null);
  const budget = { send: half, ...lastStats.budget_ms, network: half, jitter_buffer: per("jitterBufferDelay", "jitterBufferEmittedCount"), decode: per("totalDecodeTime", "framesDecoded") };
  const known = Object.values(budget).reduce((a, v) => a + (v ?? 0), 0);
  budget.display = mtpP50 - known;
  for (const k of Object.keys(budget)) budget[k] = budget[k] === null ? null : Number(budget[k].toFixed(2));
  return budget;
}

async function statsLoop(pc) {
  let lastBytes = 0, lastTime = performance.now(), lastFrames = 0, lastNew = 0, lastInbound = null;
  for (;;) {
    await new Promise((r) => setTimeout(r, 1000));
    if (!avatar) return;
    avatar.ping();
    const report = await pc.getStats();
    let inbound = null;
    report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
    const now = performance.now();
    const seconds = (now - lastTime) / 1000;
    const lines = [];
    const fps = (frames - lastFrames) / seconds;
    const fresh = (newPictures - lastNew) / seconds;
    lastNew = newPictures;
    // New pictures need the probe's stamp to be told from the track's repeats of the last one.
    const probing = $("probe").checked;
    lines.push(`${probing ? `new pictures ${fresh.toFixed(1)} fps (displayed ${fps.toFixed(1)})` : `displayed ${fps.toFixed(1)} fps (probe off: repeats counted)`}  server ${lastStats.fps ?? "-"}`);
    if (inbound) {
      const kbps = ((inbound.bytesReceived - lastBytes) * 8) / seconds / 1000;
      lastBytes = inbound.bytesReceived;
      const jb = inbound.jitterBufferEmittedCount ? (1000 * inbound.jitterBufferDelay) / inbound.jitterBufferEmittedCount : null;
      lines.push(`${kbps.toFixed(0)} kb/s  jitter buffer ${jb === null ? "-" : jb.toFixed(1)} ms`);
      window.avatarStats = { fps, kbps, jitterBufferMs: jb, decodeMs: inbound.framesDecoded ? (1000 * inbound.totalDecodeTime) / inbound.framesDecoded : null, dropped: inbound.framesDropped ?? 0, codec: report.get(inbound.codecId)?.mimeType ?? null, width: inbound.frameWidth, height: inbound.frameHeight };
    }
    lines.push(`rtt ${rtt === null ? "-" : rtt.toFixed(1)} ms`);
    const recent = mtp.slice(-300).map((s) => s.ms);
    lines.push(`motion-to-photon p50 ${percentile(recent, 50)?.toFixed(1) ?? "-"} p95 ${percentile(recent, 95)?.toFixed(1) ?? "-"} ms`);
    const budget = latencyBudget(percentile(recent, 50), lastInbound, inbound);
    if (budget) lines.push(`budget p50 ms: ${Object.entries(budget).map(([k, v]) => `${k} ${v ?? "-"}`).join("  ")}`);
    lastInbound = inbound;
    if (drive) {
      const c = drive.counts, seen = c.frames - lastCamera.frames, done = c.tracked - lastCamera.tracked;
      lastCamera = { ...c };
      const track = drive.trackingMs().slice(-60);
      lines.push(`camera ${(seen / seconds).toFixed(1)} fps, tracked ${(done / seconds).toFixed(1)} fps, tracking p50 ${percentile(track, 50)?.toFixed(1) ?? "-"} ms (${drive.delegate}, ${drive.thread} thread)`);
      const s = summarise(camera.slice(-300));
      if (s) lines.push(`camera-to-avatar p50 ${s.p50.toFixed(0)} p95 ${s.p95.toFixed(0)} ms: tracking ${s.parts.tracking.toFixed(0)}, server ${s.parts.server.toFixed(0)}, transport ${s.parts.rest.toFixed(0)}`);
    }
    const b = info?.backend;
    if (b) {
      lines.push(`backend ${b.label}`);
      if (b.generator_ms) lines.push(`  texture ${b.texture_ms} ms, generator ${b.generator_ms} ms, warp ${b.warp_ms} ms (${b.source})`);
    }
    if (lastStats.stages_ms) lines.push(`server ${Object.entries(lastStats.stages_ms).map(([k, v]) => `${k} ${v}`).join("  ")} ms`);
    if (lastStats.warped !== undefined) lines.push(`warped ${(100 * lastStats.warped).toFixed(0)}%${lastStats.warp_distance ? ` from ${lastStats.warp_distance} frames (${lastStats.warp_age_ms} ms) back` : ""}${lastStats.beyond_jump_limit ? `, ${(100 * lastStats.beyond_jump_limit).toFixed(0)}% past the jump limit` : ""}  latency ${lastStats.latency_ms} ms`);
    $("overlay").textContent = lines.join("\n");
    lastTime = now;
    lastFrames = frames;
  }
}

function drawHistogram(values) {
  const canvas = $("histogram"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!values.length) return;
  const max = Math.max(...values), bins = 30, width = Math.max(1, max / bins);
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(v / width))]++;
  const top = Math.max(...counts);
  ctx.fillStyle = "#4a7";
  counts.forEach((c, i) => {
    const h = (c / top) * (canvas.height - 14);
    ctx.fillRect((i * canvas.width) / bins, canvas.height - 12 - h, canvas.width / bins - 1, h);
  });
  ctx.fillStyle = "#333";
  ctx.fillText("0", 0, canvas.height - 1);
  ctx.fillText(`${max.toFixed(0)} ms`, canvas.width - 40, canvas.height - 1);
}

function download(id, name, type, text) {
  const a = $(id);
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.hidden = false;
}

// The latency test: sweep the head for N seconds, a new control every animation frame (the display's
// rate) or at `hz` a second, then summarise what the probe saw.
async function latencyTest(seconds, hz = null) {
  $("probe").checked = true;
  avatar.probe(true);
  testRun = { samples: [], camera: [], started: performance.now(), driving: Boolean(drive), hz, lastSend: -Infinity };
  const before = await inboundVideo(avatar.pc);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const run = testRun;
  testRun = null;
  const after = await inboundVideo(avatar.pc);
  const ms = run.samples.map((s) => s.ms);
  // fps: new pictures displayed a second (each sample is a new seq seen for the first time).
  const result = { seconds, hz, samples: ms.length, p50: percentile(ms, 50), p95: percentile(ms, 95), fps: ms.length / seconds, latencies_ms: ms };
  result.budget_ms = latencyBudget(result.p50, before, after);
  result.server = { fps: lastStats.fps ?? null, budget_ms: lastStats.budget_ms ?? null, source: lastStats.source ?? null, warped: lastStats.warped ?? null, warp_distance: lastStats.warp_distance ?? null, warp_age_ms: lastStats.warp_age_ms ?? null, warp_age_ms_p95: lastStats.warp_age_ms_p95 ?? null, drift_p95: lastStats.drift_p95 ?? null, beyond_jump_limit: lastStats.beyond_jump_limit ?? null };
  if (run.driving) {
    // Driven by the camera: the controls were the face's, and camera-to-avatar is measured too.
    result.camera = { ...summarise(run.camera), latencies_ms: run.camera.map((c) => c.total) };
  }
  $("latency-result").textContent = `${ms.length} frames, p50 ${result.p50?.toFixed(1)} ms, p95 ${result.p95?.toFixed(1)} ms`
    + (result.camera?.samples ? `; camera-to-avatar p50 ${result.camera.p50.toFixed(1)} ms, p95 ${result.camera.p95.toFixed(1)} ms` : "");
  drawHistogram(ms);
  download("download-csv", "latency.csv", "text/csv", "seq,ms\n" + run.samples.map((s) => `${s.seq},${s.ms.toFixed(2)}`).join("\n"));
  download("download-json", "latency.json", "application/json", JSON.stringify(result));
  window.latencyResult = result;
  return result;
}

function cameraStatus(text, problem = false) {
  $("camera-status").textContent = text;
  $("camera-status").classList.toggle("problem", problem);
}

// While the camera drives, the sliders follow the tracked values.
function followControls(controls) {
  if (!controls) return;
  for (const [n, v] of Object.entries(controls.expression)) show("expression", n, v);
  for (const [k, v] of Object.entries(controls.pose)) show("pose", k, v);
}

// What bench/camera.py and the tests read: the drive's counts and log, tracking times, latency.
function cameraReport() {
  if (!drive) return null;
  return { counts: { ...drive.counts }, log: drive.log, tracking_ms: drive.trackingMs(), delegate: drive.delegate, thread: drive.thread, status: drive.status, latency: summarise(camera) };
}

async function startCamera() {
  if (drive) return drive;
  if (!navigator.mediaDevices?.getUserMedia) {
    cameraStatus("this browser gives no camera to this page (it needs https or localhost)", true);
    $("camera").checked = false;
    return null;
  }
  cameraStatus("asking for the camera…");
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480, frameRate: { ideal: 30 } }, audio: false });
  } catch (e) {
    const why = e.name === "NotAllowedError" ? "the camera was refused: allow it in the browser's site settings and tick the box again"
      : e.name === "NotFoundError" ? "no camera found" : `the camera could not start: ${e.message}`;
    cameraStatus(why, true);
    $("camera").checked = false;
    return null;
  }
  cameraStatus("loading the face tracker…");
  animation = null;
  $("idle").checked = false;
  try {
    drive = await avatar.driveWithCamera(cameraStream, {
      info,
      mirror: $("mirror").checked,
      gains: { mouth: Number($("gain-mouth").value), eyes: Number($("gain-eyes").value), brows: Number($("gain-brows").value) },
      selfView: $("selfview"),
      thread: new URLSearchParams(location.search).get("camera_thread") || "auto",  // worker | main
      onStatus: (s) => cameraStatus(s, s.startsWith("no face") || s.startsWith("face lost")),
      onFrame: (frame, seq, controls) => { if (seq !== null) followControls(controls); },
    });
  } catch (e) {
    cameraStatus(`the face tracker could not start: ${e.message}`, true);
    stopCamera();
    return null;
  }
  $("selfview").hidden = false;
  $("calibrate").disabled = false;
  return drive;
}

function stopCamera() {
  if (drive) drive.stop();
  drive = null;
  if (cameraStream) for (const track of cameraStream.getTracks()) track.stop();
  cameraStream = null;
  $("selfview").hidden = true;
  $("calibrate").disabled = true;
  $("camera").checked = false;
  if (!$("camera-status").classList.contains("problem")) cameraStatus("");
}

function cameraControls() {
  $("camera").addEventListener("change", () => ($("camera").checked ? startCamera() : stopCamera()));
  $("calibrate").addEventListener("click", () => drive?.calibrate());
  $("mirror").addEventListener("change", () => drive?.setMirror($("mirror").checked));
  for (const group of ["mouth", "eyes", "brows"]) {
    $(`gain-${group}`).addEventListener("input", () => drive?.setGain(group, $(`gain-${group}`).value));
  }
}

async function start() {
  const params = new URLSearchParams(location.search);
  // A server run with --token wants it on every route but its page files (?token=... here).
  const auth = params.get("token") ? { Authorization: `Bearer ${params.get("token")}` } : {};
  const answer = await fetch("/api/avatar", { headers: auth });
  if (!answer.ok) throw new Error(`${answer.status}: ${await answer.text()}`);
  info = await answer.json();
  $("codec").value = params.get("codec") || info.codec;
  buildControls();
  if (info.source) {
    $("credit").textContent = `Face learned from ${info.source.clip} (${info.source.frames} frames): ${info.source.licence}.`;
    $("credit").hidden = false;
  }
  avatar = await connectAvatar({
    codec: $("codec").value,
    token: params.get("token"),
    // ?floor=1: a synthetic pattern instead of the avatar (server/floor.py), for the WebRTC path's own latency
    source: params.get("floor") === "1" ? "floor" : "avatar",
    onMessage: (m) => {
      if (m.type === "stats") lastStats = m;
      else if (m.type === "pong") {
        rtt = performance.now() - m.t;
        rtts.push(rtt);
        if (rtts.length > 120) rtts.shift();
      }
      else if (m.type === "error") console.warn("server:", m.message);
    },
    onClose: (reason) => { $("status").textContent = `${reason} (reload to reconnect)`; },
  });
  video.srcObject = avatar.stream;
  avatar.probe($("probe").checked);
  $("probe").addEventListener("change", () => avatar.probe($("probe").checked));
  $("codec").addEventListener("change", () => { params.set("codec", $("codec").value); location.search = params.toString(); });
  for (const b of document.querySelectorAll("[data-preset]")) b.addEventListener("click", () => applyPreset(b.dataset.preset));
  $("latency-test").addEventListener("click", () => latencyTest(Number($("latency-seconds").value)));
  dragToTurn();
  cameraControls();
  // Firefox before 132 has no requestVideoFrameCallback: the avatar plays, latency goes unmeasured.
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) onVideoFrame(probeReader(video));
  else $("latency-result").textContent = "this browser cannot time video frames: no latency figures";
  requestAnimationFrame(animate);
  statsLoop(avatar.pc);
  $("status").textContent = `connected (${info.resolution}²)`;
  window.avatarPage = { avatar, latencyTest, set, flush, mtp, camera, startCamera, stopCamera, cameraReport, get drive() { return drive; } };
  if (params.get("camera") === "1") {
    $("camera").checked = true;
    await startCamera();
  }
}

start().catch((e) => { $("status").textContent = `error: ${e.message}`; console.error(e); });
