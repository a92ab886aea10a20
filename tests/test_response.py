"""The expression response (engine/render/response.py, engine/training/response.py): a measured
curve is made monotone and inverted, served scores go through it (and only served ones), a file
with a malformed one is refused, and the command measures it on the avatar's own stills."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.controls import neutral, update
from engine.render.avatar import Avatar
from engine.render.response import CHANNELS, Curve, Response
from engine.training import response as response_module
from engine.training.readback import Reading
from tests.conftest import save_untrained_avatar

BLINK = Curve("blink", score=(0.06, 0.14, 0.30, 0.51, 0.75), weight=(0.0, 0.3, 0.5, 0.6, 1.0))


def test_a_measured_curve_is_made_monotone_and_keeps_only_rising_knots() -> None:
    weights = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    scores = [0.06, 0.05, 0.0605, 0.2, 0.19, 0.5]  # tracker wobble at the start and at 0.4
    curve = Curve.measured("blink", weights, scores)
    assert curve.score == (0.06, 0.2, 0.5) and curve.weight == (0.0, 0.3, 0.5)
    with pytest.raises(ValueError, match="does not rise"):
        Curve.measured("jawOpen", [0.0, 0.5, 1.0], [0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="must both increase"):
        Curve("smile", score=(0.1, 0.1), weight=(0.0, 1.0))
    with pytest.raises(ValueError, match="response channel"):
        Curve("frown", score=(0.1, 0.2), weight=(0.0, 1.0))


def test_a_sent_score_becomes_the_weight_that_reads_back_as_it() -> None:
    sent = np.array([0.0, 0.06, 0.14, 0.22, 0.51, 0.9])
    # Below the read-back at 0: drawn at 0; between knots: linear; above the top: its weight.
    np.testing.assert_allclose(BLINK.weight_for(sent), [0.0, 0.0, 0.3, 0.4, 0.6, 1.0])
    names = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft")
    blinks = {"eyeBlinkLeft": 0.14, "eyeBlinkRight": 0.51, "mouthSmileLeft": 0.2}
    controls = update(neutral(names), names, {"jawOpen": 0.4, **blinks}, {"yaw": 5.0})
    mapped = Response((BLINK,)).apply(controls, names)
    # Only the curve's names change; the pose and the other channels pass through.
    assert mapped.expression == pytest.approx((0.4, 0.3, 0.6, 0.2))
    assert mapped.yaw == 5.0
    assert Response.from_dict(Response((BLINK,)).to_dict()) == Response((BLINK,))


def test_served_frames_go_through_the_response_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    plain = save_untrained_avatar(tmp_path / "plain.pt")
    with_curve = save_untrained_avatar(
        tmp_path / "curve.pt", summary={"response": Response((BLINK,)).to_dict()}
    )
    a, b = Avatar.load(plain), Avatar.load(with_curve)
    names = a.expression_names
    sent = update(a.rest, names, {"eyeBlinkLeft": 0.3, "eyeBlinkRight": 0.3})
    drawn = update(a.rest, names, {"eyeBlinkLeft": 0.5, "eyeBlinkRight": 0.5})
    assert torch.equal(b.inputs([sent]).controls, a.inputs([drawn]).controls)
    assert not torch.equal(b.inputs([sent]).controls, a.inputs([sent]).controls)
    broken = save_untrained_avatar(
        tmp_path / "broken.pt", summary={"response": {"blink": {"score": [0.5, 0.2]}}}
    )
    with pytest.raises(ValueError, match=r"damaged avatar file.*response blink"):
        Avatar.load(broken)


class ScriptedReader:
    """Reads back, for each still in the order the command renders them, the channel's score as
    a known function of the weight; no face found at one of them."""

    def __init__(self) -> None:
        self.calls = 0

    def __enter__(self) -> ScriptedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, rgb: np.ndarray) -> Reading:
        assert rgb.dtype == np.uint8
        channel = list(CHANNELS)[self.calls // len(response_module.WEIGHTS)]
        weight = response_module.WEIGHTS[self.calls % len(response_module.WEIGHTS)]
        self.calls += 1
        if channel == "smile" and weight == 0.5:
            return Reading(False, {}, (0.0, 0.0, 0.0), (0, 0, 0, 0))
        score = {"jawOpen": 0.6 * weight, "smile": weight**2, "blink": 0.2}[channel]
        scores = {n: score for n in CHANNELS[channel]}
        return Reading(True, scores, (0.0, 0.0, 0.0), (0, 0, 1, 1))


def test_the_command_measures_the_avatars_own_stills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_untrained_avatar(
        tmp_path / "a.pt", summary={"response": Response((BLINK,)).to_dict()}
    )
    monkeypatch.setattr(response_module, "Reader", ScriptedReader)
    everything = ["--channels", "jawOpen", "smile", "blink"]
    assert (
        response_module.main(["--avatar", str(path), "--out", str(tmp_path / "b.pt"), *everything])
        == 0
    )
    response = Avatar.load(tmp_path / "b.pt").response
    assert response is not None
    curves = {c.channel: c for c in response.curves}
    # The blink never rose: left out (drawn as sent), not the old curve kept.
    assert set(curves) == {"jawOpen", "smile"}
    assert curves["jawOpen"].weight == response_module.WEIGHTS
    np.testing.assert_allclose(curves["jawOpen"].score, 0.6 * np.array(response_module.WEIGHTS))
    assert 0.5 not in curves["smile"].weight  # no face found there
    # The file it was measured from is untouched; by default only the blink is measured.
    assert Avatar.load(path).response == Response((BLINK,))
    monkeypatch.setattr(ScriptedReader, "read", _rising_blink)
    picture = tmp_path / "blink.png"
    assert response_module.main(["--avatar", str(path), "--strip", str(picture)]) == 0
    response = Avatar.load(path).response
    assert response is not None and [c.channel for c in response.curves] == ["blink"]
    size = Avatar.load(path).resolution
    assert Image.open(picture).size == (len(response_module.STRIP_SCORES) * size, 2 * size)


def _rising_blink(self: ScriptedReader, rgb: np.ndarray) -> Reading:
    weight = response_module.WEIGHTS[self.calls]
    self.calls += 1
    scores = {n: 0.05 + 0.7 * weight**2 for n in CHANNELS["blink"]}
    return Reading(True, scores, (0.0, 0.0, 0.0), (0, 0, 1, 1))


def test_the_reenactment_comparison_reads_back_each_response_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_untrained_avatar(tmp_path / "a.pt")
    monkeypatch.setattr(response_module, "Reader", ScriptedReader)
    monkeypatch.setattr(ScriptedReader, "read", _rising_blink_every_channel)
    seen: list[object] = []

    def fake_readback(avatar: Avatar, sources: list[str], reference: object) -> dict[str, object]:
        seen.append(avatar.summary.get("response"))
        channels = sorted(avatar.summary.get("response") or {})
        corr = {"blink": 0.5 + 0.1 * len(channels)}
        return {"rise": {}, "rest": {}, "reenact": [{"source": s, "corr": corr} for s in sources]}

    monkeypatch.setattr(response_module, "readback", fake_readback)
    table = tmp_path / "response.json"
    argv = ["--avatar", str(path), "--reenact", "cap12", "--json", str(table)]
    assert response_module.main(argv) == 0
    rows = json.loads(table.read_text())
    assert [r["response"] for r in rows] == ["as sent", "measured", "all channels"]
    assert [r["channels"] for r in rows] == [[], ["blink"], ["jawOpen", "smile", "blink"]]
    assert [r["reenact"]["cap12"]["blink"] for r in rows] == pytest.approx([0.5, 0.6, 0.8])
    assert seen[0] is None  # drawn as sent: no curve in the avatar while it was read back
    with pytest.raises(SystemExit):
        response_module.main(["--avatar", str(path), "--reenact", "cap12"])  # no --json


def _rising_blink_every_channel(self: ScriptedReader, rgb: np.ndarray) -> Reading:
    weight = response_module.WEIGHTS[self.calls % len(response_module.WEIGHTS)]
    self.calls += 1
    scores = {n: 0.05 + 0.7 * weight**2 for names in CHANNELS.values() for n in names}
    return Reading(True, scores, (0.0, 0.0, 0.0), (0, 0, 1, 1))
