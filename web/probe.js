// The latency probe's reader: the same block code as server/probe.py, read from a video frame.
// One row of BLOCKS square blocks along the bottom edge: a white and a black reference block, then
// SEQ_BITS bits of seq and CHECK_BITS check bits, most significant first, white = 1.

export const BLOCKS = 32;
const SEQ_BITS = 20;
const CHECK_BITS = 10;
const CHECK_MULTIPLIER = 0x9e37;

export function checkValue(seq) {
  // (seq * CHECK_MULTIPLIER) >> 7, masked; BigInt-free: seq < 2^20 and the multiplier < 2^16 fit
  // in a double exactly.
  return Math.floor((seq * CHECK_MULTIPLIER) / 128) & ((1 << CHECK_BITS) - 1);
}

// Read the seq stamped in an ImageData of the frame's bottom band (height = one block), or null.
export function readBand(image) {
  const size = Math.floor(image.width / BLOCKS);
  if (size < 2) return null;
  const inner = size >= 4 ? Math.floor(size / 4) : 0;
  const centres = [];
  for (let b = 0; b < BLOCKS; b++) {
    let sum = 0, n = 0;
    for (let y = inner; y < size - inner; y++) {
      for (let x = b * size + inner; x < (b + 1) * size - inner; x++) {
        const i = (y * image.width + x) * 4;
        sum += (image.data[i] + image.data[i + 1] + image.data[i + 2]) / 3;
        n++;
      }
    }
    centres.push(sum / n);
  }
  const white = centres[0], black = centres[1];
  if (white - black < 64) return null;
  const threshold = (white + black) / 2;
  let seq = 0, check = 0;
  for (let i = 0; i < SEQ_BITS; i++) seq = seq * 2 + (centres[2 + i] > threshold ? 1 : 0);
  for (let i = 0; i < CHECK_BITS; i++) check = check * 2 + (centres[2 + SEQ_BITS + i] > threshold ? 1 : 0);
  return check === checkValue(seq) ? seq : null;
}

// A reader bound to a <video>: draws only the bottom band into a small canvas.
export function probeReader(video) {
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  return () => {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    const band = Math.floor(w / BLOCKS);
    canvas.width = w;
    canvas.height = band;
    ctx.drawImage(video, 0, h - band, w, band, 0, 0, w, band);
    return readBand(ctx.getImageData(0, 0, w, band));
  };
}
