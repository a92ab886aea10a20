"""engine.pipeline.ordering.SessionState.refresh: when a still control is rendered again, and when
a cache is built from it, with controls compared as the avatar draws them."""

from __future__ import annotations

from engine.controls import Controls, hold_expression, neutral, update
from engine.pipeline.ordering import Control, SessionState

NAMES = ("jawOpen", "eyeBlinkLeft")
LIMITS = {"jawOpen": 0.5}


def _drawn(controls: Controls) -> Controls:
    return hold_expression(controls, NAMES, LIMITS)


def _still(sent: Controls, cache_from: Controls) -> SessionState:
    """A session whose newest cache (0, finished) was built from `cache_from` and whose newest
    control, `sent`, was dispatched a second ago and warped from that cache."""
    s = SessionState(id=1)
    s.start_cache(0, 0, Control(1, cache_from, 0.0), 0)
    s.cache_built(0)
    s.last, s.last_cache = Control(2, sent, 0.0), 0
    return s


def test_a_still_control_away_from_its_cache_gets_a_cache_built_from_it() -> None:
    rest = neutral(NAMES)
    s = _still(update(rest, NAMES, {"jawOpen": 0.3}), rest)
    assert s.refresh(now=1.0, settled_s=0.1, drawn=_drawn)
    assert s.pending[-1].settled and s.pending[-1].seq == 2
    # Still arriving (within settled_s): nothing yet.
    assert not _still(update(rest, NAMES, {"jawOpen": 0.3}), rest).refresh(0.05, 0.1, _drawn)


def test_controls_that_draw_the_same_picture_build_nothing() -> None:
    # The jaw sent at 1 and the cache's at 0.8 are both drawn at the limit, 0.5: one picture.
    rest = neutral(NAMES)
    wide, wider = (update(rest, NAMES, {"jawOpen": w}) for w in (0.8, 1.0))
    assert not _still(wider, wide).refresh(now=1.0, settled_s=0.1, drawn=_drawn)
    # Compared as sent (no avatar's drawing known), they differ, and a cache is built.
    assert _still(wider, wide).refresh(now=1.0, settled_s=0.1)
