"""The synthetic floor: pictures made without rendering, for measuring what this machine's WebRTC
path costs by itself (`bench.browser --floor`).

A floor session (`POST /offer` with `"source": "floor"`) goes through everything an avatar session
goes through (data channel, session, latency probe stamp, track, encoder, network, the browser's
jitter buffer, decoder and display) except the renderer: each control becomes at once a picture of
a moving pattern whose detail and motion keep the encoder about as busy as a face. Its
motion-to-photon, measured beside the avatar's in the same run, is the floor the avatar's latency
is judged against.
"""

from __future__ import annotations

import math

import numpy as np

STRIPE_PERIOD_PX = 24  # the pattern's stripes, a few per face-sized area
SHIFT_PX_PER_SEQ = 3  # how far the pattern moves per control: every picture differs


def floor_picture(seq: int, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8: diagonal stripes shifted by `seq` over a radial gradient."""
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    phase = (xs + ys + seq * SHIFT_PX_PER_SEQ) * (2.0 * math.pi / STRIPE_PERIOD_PX)
    stripes = 0.5 + 0.5 * np.sin(phase)  # (R, R)
    centre = (resolution - 1) / 2.0
    radius = np.hypot(xs - centre, ys - centre) / resolution  # (R, R), 0 .. 0.7
    base = np.clip(1.0 - radius, 0.0, 1.0)
    rgb = np.stack((stripes * base, base * 0.8, (1.0 - stripes) * base), axis=-1)  # (R, R, 3)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
