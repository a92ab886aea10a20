// The camera side: MediaPipe's Face Landmarker (vendored under /web/vendor/tasks-vision, the model
// served at /models/face_landmarker.task) run on every new frame of a camera <video>.
//
//   const tracker = await createTracker();
//   const stop = trackVideo(video, tracker, (frame) => ...);
//
// Each frame: {capture, captureKnown, mediaTime, tracked, trackMs, skipped, face}; capture is the camera
// frame's capture time on the performance.now() clock (requestVideoFrameCallback's captureTime,
// else the callback's own time), tracked when the landmarker returned, skipped the camera frames
// that went by untracked since the last one, face null or {categories, matrix, landmarks}.
import { FaceLandmarker, FilesetResolver } from "./vendor/tasks-vision/vision_bundle.mjs";

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

// delegate: "auto" (GPU where the browser has a hardware one, else CPU), "CPU" or "GPU".
export async function createTracker({ base = "", delegate = "auto" } = {}) {
  const fileset = await FilesetResolver.forVisionTasks(`${base}/web/vendor/tasks-vision/wasm`);
  const options = (d) => ({
    baseOptions: { modelAssetPath: `${base}/models/face_landmarker.task`, delegate: d },
    runningMode: "VIDEO",
    numFaces: 1,
    outputFaceBlendshapes: true,
    outputFacialTransformationMatrixes: true,
  });
  const tryGpu = delegate === "GPU" || (delegate === "auto" && hardwareWebGL());
  if (tryGpu) {
    try {
      return { landmarker: await FaceLandmarker.createFromOptions(fileset, options("GPU")), delegate: "GPU" };
    } catch (e) {
      if (delegate === "GPU") throw e;
      console.warn("GPU delegate unavailable, tracking on the CPU:", e);
    }
  }
  return { landmarker: await FaceLandmarker.createFromOptions(fileset, options("CPU")), delegate: "CPU" };
}

function faceOf(result) {
  if (!result.faceBlendshapes?.length || !result.facialTransformationMatrixes?.length) return null;
  return {
    categories: result.faceBlendshapes[0].categories,
    matrix: result.facialTransformationMatrixes[0].data,
    landmarks: result.faceLandmarks[0],
  };
}

// Track every new frame of `video` until the returned stop() is called. Browsers without
// requestVideoFrameCallback (Firefox before 132) are polled once per animation frame instead, a
// new frame told by currentTime, its capture time then the poll's time (later by up to a frame).
export function trackVideo(video, tracker, onFrame) {
  let stopped = false;
  let lastTs = 0;
  let lastPresented = null;
  const detect = (capture, captureKnown, skipped, mediaTime) => {
    const start = performance.now();
    const ts = Math.max(lastTs + 1, start); // VIDEO mode needs rising timestamps
    lastTs = ts;
    const result = tracker.landmarker.detectForVideo(video, ts);
    const tracked = performance.now();
    onFrame({ capture, captureKnown, mediaTime, tracked, trackMs: tracked - start, skipped, face: faceOf(result) });
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const step = (now, meta) => {
      if (stopped) return;
      const skipped = lastPresented === null ? 0 : Math.max(0, meta.presentedFrames - lastPresented - 1);
      lastPresented = meta.presentedFrames;
      try {
        detect(meta.captureTime ?? now, meta.captureTime !== undefined, skipped, meta.mediaTime);
      } finally {
        video.requestVideoFrameCallback(step);
      }
    };
    video.requestVideoFrameCallback(step);
  } else {
    let lastTime = -1;
    const poll = () => {
      if (stopped) return;
      if (video.readyState >= 2 && video.currentTime !== lastTime) {
        lastTime = video.currentTime;
        detect(performance.now(), false, 0, video.currentTime);
      }
      requestAnimationFrame(poll);
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
