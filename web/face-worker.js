// The Face Landmarker off the page's main thread (a module worker; web/face-tracker.js starts it).
//
// Messages in: {type: "init", base, delegate} then {type: "frame", id, bitmap, ts}; out: {type:
// "ready", delegate} or {type: "failed", message}, then {type: "result", id, face, trackMs} per frame.
//
// tasks-vision loads its WASM glue with importScripts, which a module worker has but refuses
// (TypeError); it then calls self.import(url) where defined. The glue is a classic script that
// declares a global ModuleFactory, so it is evaluated at global scope here (indirect eval).
self.import = async (url) => {
  const source = await (await fetch(url)).text();
  (0, eval)(source);
};

import { FaceLandmarker, FilesetResolver } from "./vendor/tasks-vision/vision_bundle.mjs";
import { faceOf, landmarkerOptions } from "./face-tracker.js";

let landmarker = null;

async function init(base, delegate) {
  const fileset = await FilesetResolver.forVisionTasks(`${base}/web/vendor/tasks-vision/wasm`);
  if (delegate === "GPU") {
    try {
      landmarker = await FaceLandmarker.createFromOptions(fileset, landmarkerOptions(base, "GPU"));
      return "GPU";
    } catch (e) {
      console.warn("GPU delegate unavailable in the worker, tracking on the CPU:", e);
    }
  }
  landmarker = await FaceLandmarker.createFromOptions(fileset, landmarkerOptions(base, "CPU"));
  return "CPU";
}

self.onmessage = async ({ data }) => {
  if (data.type === "init") {
    try {
      self.postMessage({ type: "ready", delegate: await init(data.base, data.delegate) });
    } catch (e) {
      self.postMessage({ type: "failed", message: String(e?.message ?? e) });
    }
  } else if (data.type === "frame") {
    const start = performance.now();
    let face = null;
    try {
      face = faceOf(landmarker.detectForVideo(data.bitmap, data.ts));
    } finally {
      data.bitmap.close();
    }
    self.postMessage({ type: "result", id: data.id, face, trackMs: performance.now() - start });
  } else if (data.type === "close") {
    landmarker?.close();
    self.close();
  }
};
