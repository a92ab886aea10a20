"""Read-back by an independent tracker: the measurement's wiring on real face pictures, and the
benchmark end to end through a real server's GET /still.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import readback as bench_readback
from engine.capture.decode import decode
from engine.capture.sample import SampleUnavailableError, fetch_sample_video
from engine.training import readback
from tests.conftest import save_untrained_avatar

LIMITS = {"yaw": [-20.0, 20.0], "pitch": [-10.0, 10.0], "roll": [-10.0, 10.0]}
NAMES = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight")


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    try:
        video = fetch_sample_video("pexels")
    except SampleUnavailableError as exc:
        pytest.skip(f"sample clip unavailable (network down?): {exc}")
    return next(iter(decode(video))).rgb


def test_a_picture_that_never_changes_reads_back_no_rise_and_no_correlation(
    face: np.ndarray,
) -> None:
    states: list[readback.State] = []

    def render(state: readback.State) -> np.ndarray:
        states.append(state)
        return face

    source = readback.SourceClip(
        scores=[{"jawOpen": 0.1 * i, "eyeBlinkLeft": 0.5} for i in range(5)],
        angles=[(30.0 * i, 0.0, 0.0) for i in range(5)],
        frames=list(range(5)),
        name="five",
    )
    report = readback.measure(render, NAMES, LIMITS, LIMITS, [source])
    assert report["detected"] == 1.0 and report["stills"] == len(states) == 1 + 3 + 18 + 5
    assert report["rise"] == {"jawOpen": 0.0, "smile": 0.0, "blink": 0.0}
    # A constant read-back says nothing about following a sweep: no figure, not a fake one.
    assert report["sweep_corr"] == {"yaw": None, "pitch": None}
    (reenacted,) = report["reenact"]
    assert reenacted["source"] == "five" and reenacted["detected"] == 5
    assert reenacted["corr"]["jawOpen"] is None
    # What was sent is reported beside the correlation: jawOpen 0..0.4, blink never moved.
    assert reenacted["sent_range"]["jawOpen"] == [0.0, 0.4] and reenacted["sent_sd"]["blink"] == 0
    # What was sent: rises at weight 1, sweeps over the offered range, the source clamped.
    assert states[1] == {"expression": {"jawOpen": 1.0}}
    assert [s["pose"]["yaw"] for s in states[4:13]] == list(np.linspace(-20.0, 20.0, 9))
    assert states[-1]["pose"]["yaw"] == 20.0 and states[-1]["expression"]["eyeBlinkLeft"] == 0.5


def test_a_blank_picture_has_no_face(face: np.ndarray) -> None:
    with readback.Reader() as reader:
        assert not reader.read(np.zeros_like(face)).found
        got = reader.read(face)
    assert got.found and got.box[2] > got.box[0] and 0 <= got.channel("smile") <= 1
    assert readback.correlation([1, 2, 3], [2, 4, 6.5]) == pytest.approx(0.9986, abs=1e-3)


@pytest.mark.slow
def test_the_benchmark_reads_stills_through_a_real_server(tmp_path: Path) -> None:
    avatar = save_untrained_avatar(tmp_path / "tiny.pt", 128)
    out = tmp_path / "readback.json"
    assert bench_readback.main(["--avatar", str(avatar), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"detected", "rise", "sweep_corr", "stills", "cpu"} <= set(report)
    assert report["stills"] == 1 + 3 + 18
    assert 0.0 <= report["detected"] <= 1.0  # an untrained avatar's stills are not faces
    assert "reenact" not in report and "sharpness_ratio" not in report
