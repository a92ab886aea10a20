// The camera side: MediaPipe's Face Landmarker (vendored under /web/vendor/tasks-vision, the model
// served at /models/face_landmarker.task) run on every new frame of a camera <video>, in a worker
// (web/face-worker.js) so that the page's main thread stays free for the avatar's video, or on the
// main thread where a module worker cannot start.
//
//   const tracker = await createTracker();
//   const stop = trackVideo(video, tracker, (frame) => ...);
//
// Each frame: {capture, captureKnown, mediaTime, tracked, trackMs, skipped, face}; capture is the
// camera frame's capture time on the page's performance.now() clock (requestVideoFrameCallback's
// captureTime, else the callback's own time), tracked when the result was back on the main thread,
// trackMs the landmarker's own time, skipped the camera frames that went by untracked since the
// last one (one frame is tracked at a time: a newer frame does not queue behind a busy tracker),
// face null or {categories, matrix, landmarks}.
import { FaceLandmarker, FilesetResolver } from "./vendor/tasks-vision/vision_bundle.mjs";

export function landmarkerOptions(base, delegate) {
  return {
    baseOptions: { modelAssetPath: `${base}/models/face_landmarker.task`, delegate },
    runningMode: "VIDEO",
    numFaces: 1,
    outputFaceBlendshapes: true,
    outputFacialTransformationMatrixes: true,
  };
}

export function faceOf(result) {
  if (!result.faceBlendshapes?.length || !result.facialTransformationMatrixes?.length) return null;
  return {
    categories: result.faceBlendshapes[0].categories,
    matrix: Array.from(result.facialTransformationMatrixes[0].data),
    landmarks: result.faceLandmarks[0],
  };
}

// A WebGL renderer that is software (headless Chromium's SwiftShader, Mesa's llvmpipe) makes the
// GPU delegate slower than the WASM CPU path; such a "GPU" is not used.
function hardwareWebGL() {
  try {
    const gl = document.createElement("canvas").getContext("webgl2");
    if (!gl) return false;
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
    return !/swiftshader|llvmpipe|software|basic render/i.test(String(renderer));
  } catch {
    return false;
  }
}

async function mainThreadTracker(base, delegate) {
  const fileset = await FilesetResolver.forVisionTasks(`${base}/web/vendor/tasks-vision/wasm`);
  let landmarker = null, used = "CPU";
  if (delegate === "GPU") {
    try {
      landmarker = await FaceLandmarker.createFromOptions(fileset, landmarkerOptions(base, "GPU"));
      used = "GPU";
    } catch (e) {
      console.warn("GPU delegate unavailable, tracking on the CPU:", e);
    }
  }
  landmarker = landmarker ?? (await FaceLandmarker.createFromOptions(fileset, landmarkerOptions(base, "CPU")));
  return {
    delegate: used,
    thread: "main",
    async detect(video, ts) {
      const start = performance.now();
      const face = faceOf(landmarker.detectForVideo(video, ts));
      return { face, trackMs: performance.now() - start };
    },
    close() { landmarker.close(); },
  };
}

async function workerTracker(base, delegate) {
  const worker = new Worker(new URL("./face-worker.js", import.meta.url), { type: "module" });
  const waiting = new Map(); // id -> resolve
  let nextId = 0;
  const ready = new Promise((resolve, reject) => {
    worker.onerror = (e) => reject(new Error(e.message || "the tracking worker failed to start"));
    worker.onmessage = ({ data }) => {
      if (data.type === "ready") resolve(data.delegate);
      else if (data.type === "failed") reject(new Error(data.message));
      else if (data.type === "result") {
        waiting.get(data.id)?.(data);
        waiting.delete(data.id);
      }
    };
  });
  worker.postMessage({ type: "init", base: base || location.origin, delegate });
  let used;
  try {
    used = await ready;
  } catch (e) {
    worker.terminate();
    throw e;
  }
  return {
    delegate: used,
    thread: "worker",
    async detect(video, ts) {
      const bitmap = await createImageBitmap(video);
      const id = nextId++;
      const done = new Promise((resolve) => waiting.set(id, resolve));
      worker.postMessage({ type: "frame", id, bitmap, ts }, [bitmap]);
      const { face, trackMs } = await done;
      return { face, trackMs };
    },
    close() { worker.postMessage({ type: "close" }); },
  };
}

// delegate: "auto" (GPU where the browser has a hardware WebGL, else CPU), "CPU" or "GPU";
// thread: "auto" (a worker where one starts, else the main thread), "worker" or "main".
export async function createTracker({ base = "", delegate = "auto", thread = "auto" } = {}) {
  const wanted = delegate === "auto" ? (hardwareWebGL() ? "GPU" : "CPU") : delegate;
  if (thread !== "main") {
    try {
      return await workerTracker(base, wanted);
    } catch (e) {
      if (thread === "worker") throw e;
      console.warn("no tracking worker, tracking on the main thread:", e);
    }
  }
  return mainThreadTracker(base, wanted);
}

// Track every new frame of `video` until the returned stop() is called. Browsers without
// requestVideoFrameCallback (Firefox before 132) are polled once per animation frame instead, a
// new frame told by currentTime, its capture time then the poll's time (later by up to a frame).
export function trackVideo(video, tracker, onFrame) {
  let stopped = false;
  let busy = false;
  let lastTs = 0;
  let lastPresented = null;
  let missed = 0; // frames that arrived while the tracker was busy
  const track = async (capture, captureKnown, mediaTime) => {
    busy = true;
    const ts = Math.max(lastTs + 1, Math.round(capture)); // VIDEO mode needs rising timestamps
    lastTs = ts;
    try {
      const { face, trackMs } = await tracker.detect(video, ts);
      if (stopped) return;
      const skipped = missed;
      missed = 0;
      onFrame({ capture, captureKnown, mediaTime, tracked: performance.now(), trackMs, skipped, face });
    } catch (e) {
      if (!stopped) console.warn("tracking failed on a frame:", e);
    } finally {
      busy = false;
    }
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const step = (now, meta) => {
      if (stopped) return;
      video.requestVideoFrameCallback(step);
      if (lastPresented !== null) missed += Math.max(0, meta.presentedFrames - lastPresented - 1);
      lastPresented = meta.presentedFrames;
      if (busy) { missed += 1; return; }
      track(meta.captureTime ?? now, meta.captureTime !== undefined, meta.mediaTime);
    };
    video.requestVideoFrameCallback(step);
  } else {
    let lastTime = -1;
    const poll = () => {
      if (stopped) return;
      requestAnimationFrame(poll);
      if (video.readyState < 2 || video.currentTime === lastTime) return;
      lastTime = video.currentTime;
      if (busy) { missed += 1; return; }
      track(performance.now(), false, video.currentTime);
    };
    requestAnimationFrame(poll);
  }
  return () => { stopped = true; };
}

// Draw the camera frame and the tracked points on a small canvas (the self-view).
export function drawSelfView(canvas, video, face, mirror) {
  const ctx = canvas.getContext("2d");
  ctx.save();
  if (mirror) { ctx.translate(canvas.width, 0); ctx.scale(-1, 1); }
  ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
  if (face) {
    ctx.fillStyle = "#4f8";
    for (let i = 0; i < face.landmarks.length; i += 2) {
      const p = face.landmarks[i];
      ctx.fillRect(p.x * canvas.width - 0.5, p.y * canvas.height - 0.5, 1.5, 1.5);
    }
  }
  ctx.restore();
}
