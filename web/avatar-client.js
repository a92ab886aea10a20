// Embedding API: connect to an avatar server and get a MediaStream to show or to send into a call.
//
//   import { connectAvatar } from "/web/avatar-client.js";
//   const avatar = await connectAvatar({ url: "", codec: "vp8" });
//   video.srcObject = avatar.stream;            // or pc.addTrack(avatar.stream.getVideoTracks()[0])
//   avatar.setControls({ expression: { jawOpen: 0.5 }, pose: { yaw: 10 } });
//   const drive = await avatar.driveWithCamera(await navigator.mediaDevices.getUserMedia({ video: true }));
//   avatar.close();
// Options: url, codec, iceServers, token (for a server run with --token), onMessage(message) for the
// server's messages, onClose(reason) once the session has ended (the server's reason when it gave one),
// source: "avatar", or "floor" for a synthetic pattern through the same path (latency floor),
// jitterBufferTarget: ms of video the browser should hold (default 0: the least; null: its own choice).
// driveWithCamera(stream, options) tracks a face in `stream` in this page and drives the avatar with
// it (web/camera-drive.js, loaded only when asked for: it brings MediaPipe's 13 MB WASM).

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Why the session ended, from the server that placed it (GET answer.events, server-sent events over
// fetch so that the token goes in a header): a render node that dies cannot say so on the data
// channel, and the browser's own check would take ~30 s to notice.
async function watchEnd(url, path, auth, onEnded) {
  const controller = new AbortController();
  (async () => {
    const response = await fetch(`${url}${path}`, { headers: auth, signal: controller.signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      text += value;
      const match = text.match(/event: ended\ndata: (.*)\n\n/);
      if (match) return onEnded(JSON.parse(match[1]).reason);
    }
  })().catch(() => {}); // aborted on close, or the server went away: the channel tells then
  return () => controller.abort();
}

function preferCodec(transceiver, codec) {
  if (!transceiver.setCodecPreferences || !window.RTCRtpReceiver?.getCapabilities) return;
  const all = RTCRtpReceiver.getCapabilities("video").codecs;
  const wanted = all.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
  if (wanted.length) transceiver.setCodecPreferences([...wanted, ...all.filter((c) => !wanted.includes(c))]);
}

export async function connectAvatar({ url = "", codec = "vp8", iceServers = [], token = null, onMessage = null, onClose = null, source = "avatar", jitterBufferTarget = 0 } = {}) {
  const pc = new RTCPeerConnection({ iceServers });
  const channel = pc.createDataChannel("control");
  const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
  preferCodec(transceiver, codec);
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    // The avatar answers the user's own motion: ask the browser to hold as little video as it can
    // (a hint; where the browser has no such setting, its own default stays).
    if (jitterBufferTarget !== null && "jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = jitterBufferTarget;
    stream.addTrack(event.track);
  });
  const opened = new Promise((resolve, reject) => {
    channel.addEventListener("open", resolve, { once: true });
    channel.addEventListener("error", reject, { once: true });
  });
  // Why the session ended, once: the server says so in an error before it closes a session
  // (time limit, shutdown); otherwise the channel or the connection just went away.
  let farewell = null;
  let ended = false;
  const end = (why) => {
    if (ended) return;
    ended = true;
    if (onClose) onClose(farewell || why);
  };
  channel.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "error" && message.message.startsWith("session ended")) farewell = message.message;
    if (onMessage) onMessage(message);
  });
  channel.addEventListener("close", () => end("the connection closed"));
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "failed" || pc.connectionState === "closed") end(`connection ${pc.connectionState}`);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const auth = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(`${url}/offer`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...auth },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, ...(source === "avatar" ? {} : { source }) }),
  });
  if (!response.ok) {
    pc.close();
    const retry = response.headers.get("Retry-After");
    throw new Error(`${response.status}: ${await response.text()}${retry ? ` (retry after ${retry} s)` : ""}`);
  }
  const answer = await response.json();
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  const stopWatching = answer.events
    ? await watchEnd(url, answer.events, auth, (reason) => {
      farewell = farewell || `session ended: ${reason}`;
      end(farewell);
      pc.close();
    })
    : () => {};
  await opened;
  let seq = 0;
  const sent = new Map(); // seq -> send time (performance.now), for the latency probe
  const send = (message) => {
    if (channel.readyState === "open") channel.send(JSON.stringify(message));
  };
  return {
    stream,
    pc,
    channel,
    session: answer.session,
    sent,
    setControls(fields) {
      seq += 1;
      const t = performance.now();
      sent.set(seq, t);
      if (sent.size > 4096) sent.delete(sent.keys().next().value);
      send({ type: "control", seq, t, ...fields });
      return seq;
    },
    ping() { send({ type: "ping", t: performance.now() }); },
    probe(on) { send({ type: "probe", on }); },
    async driveWithCamera(camera, options = {}) {
      const { driveWithCamera } = await import(new URL("./camera-drive.js", import.meta.url));
      return driveWithCamera(this, camera, { url, ...options });
    },
    auth,
    close() { stopWatching(); channel.close(); pc.close(); },
  };
}
