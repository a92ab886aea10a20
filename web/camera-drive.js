// Drive a connected avatar with a person's face: camera -> tracker -> controls -> data channel.
//
//   const drive = await driveWithCamera(avatar, stream, { info });   // avatar: connectAvatar()'s
//   drive.calibrate();  drive.setMirror(true);  drive.setGain("mouth", 1.5);  drive.stop();
//
// At most one control per tracked camera frame, on the usual `control` messages. calibrate() takes
// the next second of face as the user's own rest and maps it onto the avatar's (`autoCalibrate`:
// the first second, for a user who starts looking straight; not the default, since a second of a
// smile or a turned head taken as rest would squash every smile or turn after it: measured, the
// sent smile's correlation with the face fell from 0.82 to 0.34). Without a face nothing is sent;
// after REST_AFTER_MS without one the avatar eases back to rest over EASE_MS, then is left alone.
// For the latency figures every control's seq keeps its camera frame's capture time, the time
// tracking ended and the send time (`timings`); the page ties them to the displayed frame's seq.
// `log` keeps, per tracked camera frame, its times, the face as tracked and what was sent (the
// tests compare it with an offline capture of the same clip).
import { FaceToControls, blend } from "./face-controls.js";
import { createTracker, drawSelfView, trackVideo } from "./face-tracker.js";

export const REST_AFTER_MS = 250;
export const EASE_MS = 250;
export const CALIBRATE_MS = 1000;
const KEEP = 4096; // seqs whose timings are kept
const LOG_KEEP = 20000; // tracked frames kept in the log (over ten minutes at 30 fps)

export async function driveWithCamera(avatar, stream, {
  url = "", info = null, mirror = false, gains = {}, delegate = "auto", thread = "auto", selfView = null,
  calibrateMs = CALIBRATE_MS, autoCalibrate = false, onFrame = null, onStatus = null,
} = {}) {
  info = info ?? (await (await fetch(`${url}/api/avatar`, { headers: avatar.auth ?? {} })).json());
  const video = Object.assign(document.createElement("video"), { muted: true, playsInline: true, autoplay: true });
  video.srcObject = stream;
  await video.play();
  const tracker = await createTracker({ base: url, delegate, thread });
  const mapping = new FaceToControls(info, { mirror, gains });
  const timings = new Map(); // seq -> {capture, tracked, sent, captureKnown}
  const counts = { frames: 0, tracked: 0, faces: 0, skipped: 0, sent: 0, restSent: 0 };
  const trackMs = [];
  const log = []; // {capture, mediaTime, face, seq, kind: "face" | "rest" | null, controls}
  let calibration = autoCalibrate ? { until: null, readings: [] } : null; // null: not calibrating
  let lastFace = null; // performance.now() of the last frame with a face
  let lastSent = null; // the last controls sent
  let resting = true; // at rest already: nothing to ease
  let status = null;
  const say = (s) => { if (s !== status) { status = s; if (onStatus) onStatus(s); } };

  const send = (controls, capture, tracked, captureKnown) => {
    const seq = avatar.setControls(controls);
    timings.set(seq, { capture, tracked, sent: performance.now(), captureKnown });
    if (timings.size > KEEP) timings.delete(timings.keys().next().value);
    lastSent = controls;
    return seq;
  };

  const onCameraFrame = (frame) => {
    counts.frames += 1 + frame.skipped;
    counts.skipped += frame.skipped;
    counts.tracked += 1;
    trackMs.push(frame.trackMs);
    if (trackMs.length > 600) trackMs.shift();
    const now = frame.tracked;
    let seq = null;
    let reading = null; // the face as tracked: scores by name and pose, before any mapping
    if (frame.face) {
      counts.faces += 1;
      if (lastFace === null || now - lastFace > REST_AFTER_MS) mapping.resetFilters(); // no smoothing across a gap
      lastFace = now;
      resting = false;
      const raw = { categories: frame.face.categories, matrix: frame.face.matrix };
      reading = mapping.probe(raw);
      if (calibration) {
        if (calibration.until === null) calibration.until = now + calibrateMs;
        calibration.readings.push(reading);
        if (now >= calibration.until) {
          mapping.calibrate(calibration.readings);
          calibration = null;
        }
      }
      say(calibration ? "calibrating: look straight, relaxed" : mapping.userRest ? "tracking (calibrated)" : "tracking");
      seq = send(mapping.controls(raw, frame.capture), frame.capture, frame.tracked, frame.captureKnown);
      counts.sent += 1;
    } else {
      const lost = lastFace === null ? Infinity : now - lastFace;
      say(lastFace === null ? "no face seen: face the camera" : "face lost: easing back to rest");
      if (!resting && lost > REST_AFTER_MS) {
        const s = Math.min(1, (lost - REST_AFTER_MS) / EASE_MS);
        const rest = mapping.restControls();
        seq = send(s >= 1 ? rest : blend(lastSent ?? rest, rest, s), frame.capture, frame.tracked, frame.captureKnown);
        counts.restSent += 1;
        if (s >= 1) resting = true;
      }
    }
    log.push({ capture: frame.capture, captureKnown: frame.captureKnown, mediaTime: frame.mediaTime, face: Boolean(frame.face), seq, kind: seq === null ? null : frame.face ? "face" : "rest", controls: seq === null ? null : lastSent, reading });
    if (log.length > LOG_KEEP) log.shift();
    if (selfView) drawSelfView(selfView, video, frame.face, mapping.mirror);
    if (onFrame) onFrame(frame, seq, lastSent);
  };
  const stopTracking = trackVideo(video, tracker, onCameraFrame);
  say("no face seen: face the camera");

  return {
    video,
    timings,
    counts,
    log,
    delegate: tracker.delegate,
    thread: tracker.thread,
    get status() { return status; },
    get calibrated() { return mapping.userRest !== null; },
    calibrate() { calibration = { until: null, readings: [] }; },
    setMirror(on) { mapping.mirror = Boolean(on); mapping.resetFilters(); },
    setGain(group, value) { mapping.gains[group] = Number(value); },
    trackingMs() { return [...trackMs]; },
    stop() {
      stopTracking();
      tracker.close();
      video.srcObject = null;
    },
  };
}
