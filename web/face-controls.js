// From a tracked face to the avatar's controls: pure functions and small state holders, no DOM.
//
//   scores + matrix (MediaPipe Face Landmarker) -> named scores, yaw/pitch/roll (the project's pose
//   convention) -> calibrated onto the avatar's rest -> gains -> One Euro filter -> held to the
//   avatar's offered range -> a `control` message's fields.
//
// The avatar's expression names are MediaPipe's blendshape names, so the mapping is by name; names
// the avatar lacks are dropped and its inert ones (GET /api/avatar "inert") are never sent.

const DEG = 180 / Math.PI;

// Head pose from MediaPipe's 4x4 facial transformation matrix (Matrix.data, column-major) in the
// project's convention (engine/head/model.py: R = Ry(yaw) Rx(pitch) Rz(roll), degrees; positive
// yaw turns the face to image right, positive pitch turns it down). The 3x3 part carries a scale:
// each column is normalised first (the Python side takes the nearest rotation; for MediaPipe's
// near-orthogonal matrices the angles agree to well under a degree).
export function poseFromMatrix(data) {
  const at = (r, c) => data[c * 4 + r];
  const norms = [0, 1, 2].map((c) => Math.hypot(at(0, c), at(1, c), at(2, c)) || 1);
  const m = (r, c) => at(r, c) / norms[c];
  return {
    yaw: Math.atan2(m(0, 2), m(2, 2)) * DEG,
    pitch: Math.asin(Math.max(-1, Math.min(1, -m(1, 2)))) * DEG,
    roll: Math.atan2(m(1, 0), m(1, 1)) * DEG,
  };
}

// MediaPipe's blendshape categories -> {name: score} for the names the avatar has and animates.
export function namedScores(categories, expressionNames, inert = []) {
  const wanted = new Set(expressionNames);
  for (const name of inert) wanted.delete(name);
  const out = {};
  for (const c of categories) if (wanted.has(c.categoryName)) out[c.categoryName] = c.score;
  return out;
}

// Which control group a name belongs to, for the per-group gains.
export function groupOf(name) {
  if (/^(jaw|mouth|tongue|cheekPuff)/.test(name)) return "mouth";
  if (name.startsWith("eye")) return "eyes";
  if (name.startsWith("brow")) return "brows";
  return "other";
}

// A score with the user's own rest `u` mapped onto the avatar's rest `a`, piecewise linearly
// (0 -> 0, u -> a, 1 -> 1), then its distance from `a` scaled by `gain`; held to [0, 1].
export function remapScore(v, u, a, gain = 1) {
  const uu = Math.min(Math.max(u, 1e-3), 1 - 1e-3);
  const mapped = v <= uu ? (a * v) / uu : a + ((1 - a) * (v - uu)) / (1 - uu);
  return Math.min(1, Math.max(0, a + gain * (mapped - a)));
}

// Mirror: the avatar moves as the user's mirror image (left and right swapped, yaw and roll negated).
export function mirrored(scores, pose) {
  const swap = (n) => (n.endsWith("Left") ? `${n.slice(0, -4)}Right` : n.endsWith("Right") ? `${n.slice(0, -5)}Left` : n);
  const out = {};
  for (const [n, v] of Object.entries(scores)) out[swap(n)] = v;
  return [out, { yaw: -pose.yaw, pitch: pose.pitch, roll: -pose.roll }];
}

export function clamp(value, [lo, hi]) {
  return Math.min(hi, Math.max(lo, value));
}

// The One Euro filter (Casiez, Roussel, Vogel, CHI 2012): a low-pass whose cutoff rises with the
// signal's speed, so a still face does not jitter and a fast move does not lag. minCutoff (Hz) sets
// the smoothing at rest, beta how fast the cutoff opens with speed, dCutoff smooths the speed.
export class OneEuro {
  constructor({ minCutoff = 1.0, beta = 0.0, dCutoff = 1.0 } = {}) {
    Object.assign(this, { minCutoff, beta, dCutoff });
    this.x = null;
    this.dx = 0;
    this.t = null;
  }

  static alpha(cutoff, dt) {
    const tau = 1 / (2 * Math.PI * cutoff);
    return 1 / (1 + tau / dt);
  }

  // value at time tMs (milliseconds) -> filtered value
  filter(value, tMs) {
    if (this.x === null || this.t === null || tMs <= this.t) {
      if (this.x === null) this.x = value;
      this.t = this.t === null ? tMs : Math.max(this.t, tMs);
      return this.x;
    }
    const dt = (tMs - this.t) / 1000;
    const speed = (value - this.x) / dt;
    this.dx += OneEuro.alpha(this.dCutoff, dt) * (speed - this.dx);
    const cutoff = this.minCutoff + this.beta * Math.abs(this.dx);
    this.x += OneEuro.alpha(cutoff, dt) * (value - this.x);
    this.t = tMs;
    return this.x;
  }

  reset() {
    this.x = null;
    this.dx = 0;
    this.t = null;
  }
}

// Filter settings: scores move fast (a blink is ~100 ms) and live in [0, 1]; pose is in degrees.
export const FILTERS = {
  score: { minCutoff: 3.0, beta: 5.0, dCutoff: 1.0 },
  pose: { minCutoff: 1.0, beta: 0.3, dCutoff: 1.0 },
};

// The median of each key over a list of {name: value} readings.
export function medians(readings) {
  const keys = new Set(readings.flatMap((r) => Object.keys(r)));
  const out = {};
  for (const k of keys) {
    const values = readings.map((r) => r[k]).filter((v) => v !== undefined).sort((a, b) => a - b);
    out[k] = values[Math.floor(values.length / 2)];
  }
  return out;
}

// The whole mapping, with its state (calibration, filters). `avatar` is GET /api/avatar's answer.
export class FaceToControls {
  constructor(avatar, { mirror = false, gains = {}, filters = FILTERS } = {}) {
    this.names = avatar.expression_names;
    this.inert = avatar.inert ?? [];
    this.rest = avatar.rest_expression ?? {};
    this.limits = avatar.pose_limits_deg;
    this.mirror = mirror;
    this.gains = { mouth: 1, eyes: 1, brows: 1, other: 1, ...gains };
    this.filterSettings = filters;
    this.userRest = null; // {scores, pose} once calibrated
    this.filters = new Map();
  }

  // One tracked face, before calibration, mirroring and filtering: what calibration collects.
  probe(face) {
    return { scores: namedScores(face.categories, this.names, this.inert), pose: poseFromMatrix(face.matrix) };
  }

  calibrate(readings) {
    // readings: [{scores, pose}] over about a second of the user looking straight, relaxed
    this.userRest = {
      scores: medians(readings.map((r) => r.scores)),
      pose: medians(readings.map((r) => r.pose)),
    };
  }

  resetFilters() {
    this.filters.clear();
  }

  _filter(key, kind, value, tMs) {
    let f = this.filters.get(key);
    if (!f) this.filters.set(key, (f = new OneEuro(this.filterSettings[kind])));
    return f.filter(value, tMs);
  }

  // One tracked face -> {expression, pose} to send (tMs: the camera frame's time, for the filter).
  controls(face, tMs) {
    let { scores, pose } = this.probe(face);
    const base = this.userRest;
    if (base) pose = { yaw: pose.yaw - base.pose.yaw, pitch: pose.pitch - base.pose.pitch, roll: pose.roll - base.pose.roll };
    const expression = {};
    for (const [n, v] of Object.entries(scores)) {
      const own = this.rest[n] ?? 0;
      const user = base ? (base.scores[n] ?? own) : own;
      expression[n] = remapScore(v, user, own, this.gains[groupOf(n)] ?? 1);
    }
    scores = expression;
    if (this.mirror) [scores, pose] = mirrored(scores, pose);
    const out = { expression: {}, pose: {} };
    for (const [n, v] of Object.entries(scores)) out.expression[n] = Math.min(1, Math.max(0, this._filter(n, "score", v, tMs)));
    for (const k of ["yaw", "pitch", "roll"]) out.pose[k] = clamp(this._filter(k, "pose", pose[k], tMs), this.limits[k]);
    return out;
  }

  // The avatar at rest, as controls: where it eases back to when the face is lost.
  restControls() {
    const expression = {};
    for (const n of this.names) if (!this.inert.includes(n)) expression[n] = this.rest[n] ?? 0;
    return { expression, pose: { yaw: 0, pitch: 0, roll: 0 } };
  }
}

// Controls part of the way from `a` to `b` (s in 0..1).
export function blend(a, b, s) {
  const mix = (x, y) => x + (y - x) * s;
  const expression = {}, pose = {};
  for (const n of Object.keys(b.expression)) expression[n] = mix(a.expression[n] ?? b.expression[n], b.expression[n]);
  for (const k of Object.keys(b.pose)) pose[k] = mix(a.pose[k] ?? b.pose[k], b.pose[k]);
  return { expression, pose };
}
