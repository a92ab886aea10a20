"""An avatar file's read-back (engine.training.readback) and its reenactment strip: its stills drawn
as `GET /still.png` draws them, read back by the independent tracker, and driven by the controls
tracked from other people's clips (a source frame above the avatar's picture of it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.capture.decode import decode
from engine.capture.sample import sample_or_path
from engine.controls import POSE_LIMITS_DEG, update
from engine.render.avatar import Avatar
from engine.training.readback import Render, SourceClip, State, measure, source_state, track_clip

REENACT_STRIP = 6  # source frames shown above the avatar's pictures of them
# Other people the read-back reenacts: the Pexels clip (a woman crying, then laughing; her mouth
# hardly opens) and two webcam clips of a man who talks (engine/capture/sample.py).
REENACT_SOURCES = ("pexels", "cap12", "cap13")


def square(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) -> its centre square, resized to side x side."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    centre = rgb[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(centre).resize((side, side), Image.Resampling.LANCZOS))


def still_renderer(avatar: Avatar) -> Render:
    """A state -> the avatar's picture of it, as `GET /still.png` renders it."""
    names = avatar.expression_names

    def render(state: State) -> np.ndarray:
        controls = update(avatar.rest, names, state.get("expression"), state.get("pose"))
        return avatar.render(controls)

    return render


def readback(
    avatar: Avatar, sources: Sequence[str], reference: object, strip: Path | None = None
) -> dict[str, Any]:
    """The read-back of the avatar's own stills, reenacted from each of `sources` (sample names
    or video paths); `strip`: where to save, for each source, REENACT_STRIP of its frames above
    the avatar's pictures of them."""
    limits = avatar.pose_range_deg or {k: list(v) for k, v in POSE_LIMITS_DEG.items()}
    accepted = {k: list(v) for k, v in POSE_LIMITS_DEG.items()}
    ref = sample_or_path(reference) if isinstance(reference, str) else None
    videos = {name: sample_or_path(name) for name in sources}
    tracked = [track_clip(path, name=name) for name, path in videos.items()]
    render = still_renderer(avatar)
    report = measure(render, avatar.expression_names, limits, accepted, tracked, ref)
    if strip is not None and tracked:
        rows = [
            row
            for clip, video in zip(tracked, videos.values(), strict=True)
            for row in reenact_rows(clip, video, render, avatar.expression_names, accepted)
        ]
        Image.fromarray(np.concatenate(rows, 0)).save(strip)
    return report | {"sources": list(sources), "reference": reference}


def reenact_rows(
    clip: SourceClip,
    video: Path,
    render: Render,
    names: Sequence[str],
    accepted: dict[str, list[float]],
) -> tuple[np.ndarray, np.ndarray]:
    """REENACT_STRIP frames of `clip` side by side, and the avatar's pictures of them below."""
    picks = np.linspace(0, len(clip.frames) - 1, REENACT_STRIP).round().astype(int)
    wanted = {clip.frames[i]: i for i in picks}
    top, bottom = [], []
    for frame in decode(video):
        i = wanted.get(frame.index)
        if i is None:
            continue
        picture = render(source_state(clip.scores[i], clip.angles[i], names, accepted))
        top.append(square(frame.rgb, picture.shape[0]))
        bottom.append(picture)
    return np.concatenate(top, 1), np.concatenate(bottom, 1)
