"""engine.pipeline.dispatcher with real worker processes on a tiny untrained avatar: order, cache use, live
mode, sessions, faults and clean shutdown."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine.controls import Controls, neutral, update
from engine.head.default import build_default_head
from engine.pipeline.dispatcher import Frame, Pipeline, PipelineSettings
from engine.pipeline.schedule import Schedule
from engine.pipeline.workers import wait_for_exit
from tests.conftest import save_untrained_avatar

NAMES = build_default_head().expression_names
GET_TIMEOUT_S = 30.0  # generous: the test machine may be busy


@pytest.fixture(scope="module")
def tiny_avatar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "tiny.pt"
    return save_untrained_avatar(path)


def _controls(i: int) -> Controls:
    return update(neutral(NAMES), NAMES, pose={"yaw": float(i % 40 - 20)})


def _collect(p: Pipeline, session: int, count: int) -> list[Frame]:
    frames: list[Frame] = []
    while len(frames) < count:
        frame = p.get(session, timeout=GET_TIMEOUT_S)
        assert frame is not None, f"no frame after {len(frames)}: {p.stats(session)}"
        frames.append(frame)
    return frames


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir()} if Path("/dev/shm").exists() else set()


@pytest.mark.parametrize(
    "schedule",
    [Schedule("sequential", 1, 2), Schedule("parallel", 2, 2), Schedule("generator", 2)],
    ids=lambda s: s.label,
)
def test_replay_frames_leave_in_order_under_random_delays(
    tiny_avatar: Path, schedule: Schedule
) -> None:
    settings = PipelineSettings(tiny_avatar, schedule, mode="replay", threads=1, jitter_ms=15.0)
    count = 16
    with Pipeline(settings) as p:
        session = p.open_session()
        for i in range(count):
            p.submit(session, seq=i, controls=_controls(i))
        frames = _collect(p, session, count)
    assert [f.frame for f in frames] == list(range(count))
    assert [f.seq for f in frames] == list(range(count))  # replay: every control, in order
    for f in frames:
        step = schedule.step(f.frame)
        assert (f.worker, f.generated, f.distance) == (step.worker, step.generated, step.distance)
        # Instrumented: the cache a frame came from was finished before the frame started.
        assert f.cache_ready <= f.started <= f.finished
        assert f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8


def test_live_mode_drops_stale_controls_and_latency_stays_flat(tiny_avatar: Path) -> None:
    settings = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 2), mode="live", threads=1)
    frames: list[Frame] = []
    with Pipeline(settings) as p:
        session = p.open_session()
        seq = 0
        while len(frames) < 1000:
            for _ in range(3):  # controls arrive faster than frames can be made
                seq += 1
                p.submit(session, seq, _controls(seq))
            frame = p.get(session, timeout=0.0)
            if frame is not None:
                frames.append(frame)
            else:
                time.sleep(0.001)
        assert p.stats(session)["dropped"] > 0
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # newer and newer, never repeated
    early = np.median([f.latency_ms for f in frames[50:250]])
    late = np.median([f.latency_ms for f in frames[-200:]])
    assert late < 3 * early + 20  # nothing queues up with time (generous for a busy machine)


def test_sessions_never_receive_each_others_frames(tiny_avatar: Path) -> None:
    settings = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 1), mode="replay", threads=1)
    with Pipeline(settings) as p:
        a, b = p.open_session(), p.open_session()
        for i in range(10):
            p.submit(a, 1000 + i, _controls(i))
            p.submit(b, 2000 + i, update(neutral(NAMES), NAMES, expression={"jawOpen": 1.0}))
        frames_a, frames_b = _collect(p, a, 10), _collect(p, b, 10)
    assert {f.session for f in frames_a} == {a} and {f.session for f in frames_b} == {b}
    assert [f.seq for f in frames_a] == list(range(1000, 1010))
    assert [f.seq for f in frames_b] == list(range(2000, 2010))


def test_an_error_in_one_session_harms_no_other(tiny_avatar: Path) -> None:
    bad = dataclasses.replace(
        neutral(NAMES), expression=(0.0,) * 3
    )  # wrong length: the worker raises
    settings = PipelineSettings(tiny_avatar, Schedule("sequential", 1, 2), mode="replay", threads=1)
    with Pipeline(settings) as p:
        good, broken = p.open_session(), p.open_session()
        for i in range(6):
            p.submit(broken, i, bad)
            p.submit(good, i, _controls(i))
        frames = _collect(p, good, 6)
        deadline = time.monotonic() + GET_TIMEOUT_S
        while not p.errors(broken) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.stats(broken)["lost"] > 0
        assert p.errors(good) == []
    assert [f.seq for f in frames] == list(range(6))


def test_a_killed_worker_is_restarted_and_sessions_go_on(tiny_avatar: Path) -> None:
    settings = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 2), mode="live", threads=1)
    with Pipeline(settings) as p:
        session = p.open_session()
        seq = 0

        def frames_for(seconds: float) -> list[Frame]:
            nonlocal seq
            out = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                seq += 1
                p.submit(session, seq, _controls(seq))
                frame = p.get(session, timeout=0.05)
                if frame is not None:
                    out.append(frame)
            return out

        deadline = time.monotonic() + GET_TIMEOUT_S  # the first cache builds at nice 10
        while not frames_for(1.0):
            assert time.monotonic() < deadline, "no frames before the kill"
        victim = p.worker_pids[1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        while p.restarts == 0:
            # How soon is bench.faults' figure (0.1-0.3 s); here only that it is noticed at all.
            assert time.monotonic() - killed_at < GET_TIMEOUT_S, "the dead worker was not noticed"
            time.sleep(0.01)
        assert victim not in p.worker_pids
        soon = frames_for(3.0)  # the other worker carries on alone while the dead one restarts
        assert soon, "no frames while the dead worker restarted"
        deadline = time.monotonic() + GET_TIMEOUT_S
        after: list[Frame] = []
        while not any(f.worker == 1 for f in after) and time.monotonic() < deadline:
            after += frames_for(0.5)
        assert any(f.worker == 1 for f in after), "the restarted worker never rendered again"
        assert any("died" in e for e in p.errors(session))
        assert p.stats(session)["epoch"] >= 1  # caches were rebuilt


def test_shutdown_leaves_no_process_and_no_shared_memory(tiny_avatar: Path) -> None:
    before = _shm_segments()
    settings = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 1), mode="live", threads=1)
    p = Pipeline(settings).start()
    pids = p.worker_pids
    assert len(_shm_segments() - before) == 2  # one ring per worker
    p.close()
    p.close()  # idempotent
    assert wait_for_exit(pids, 5.0)
    assert _shm_segments() - before == set()


def test_a_crashed_parent_leaves_no_process_and_no_shared_memory(tiny_avatar: Path) -> None:
    before = _shm_segments()
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from engine.pipeline.dispatcher import Pipeline, PipelineSettings
        from engine.pipeline.schedule import Schedule
        p = Pipeline(PipelineSettings(Path({str(tiny_avatar)!r}), Schedule("parallel", 2, 1),
                                      threads=1)).start()
        print(" ".join(map(str, p.worker_pids)), flush=True)
        sys.stdin.read()  # wait to be killed
        """
    )
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
        text=True,
    )
    assert child.stdout is not None
    pids = [int(x) for x in child.stdout.readline().split()]
    assert len(pids) == 2 and len(_shm_segments() - before) == 2
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert wait_for_exit(pids, 10.0), "workers outlived their parent"
    deadline = time.monotonic() + 10.0
    while _shm_segments() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shm_segments() - before == set(), "shared memory left behind"


def test_bad_settings_are_refused(tiny_avatar: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        PipelineSettings(tiny_avatar, Schedule("generator"), mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="devices"):
        PipelineSettings(tiny_avatar, Schedule("parallel", 2, 1), devices=("cpu",))
    with pytest.raises(FileNotFoundError):
        Pipeline(PipelineSettings(tmp_path / "absent.pt", Schedule("generator"))).start()
    settings = PipelineSettings(tiny_avatar, Schedule("generator"), threads=1)
    with Pipeline(settings) as p, pytest.raises(KeyError):
        p.submit(12345, 1, neutral(NAMES))


def test_pipeline_benchmark_reports_the_contract_keys(tiny_avatar: Path) -> None:
    from bench import pipeline as pipeline_bench

    controls = [_controls(i) for i in range(20)]
    mode = pipeline_bench.measure_mode(tiny_avatar, Schedule("parallel", 2, 2), controls, 12)
    assert {
        "name",
        "workers",
        "num_warps",
        "fps",
        "latency_ms_p50",
        "latency_ms_p95",
        "frames",
    } <= set(mode)
    assert mode["name"] == "parallel-N2-W2" and mode["workers"] == 2 and mode["num_warps"] == 2
    assert mode["frames"] == 12 and mode["fps"] > 0
    assert 0 < mode["latency_ms_p50"] <= mode["latency_ms_p95"]
    ages = (mode["live_warp_age_ms_mean"], mode["live_warp_age_ms_p95"])
    assert ages == (None, None) if mode["live_warped_share"] == 0 else min(ages) >= 0
    assert "| parallel-N2-W2 |" in pipeline_bench.table([mode])


def test_a_busy_session_does_not_starve_another(tiny_avatar: Path) -> None:
    settings = PipelineSettings(tiny_avatar, Schedule("sequential", 1, 2), mode="replay", threads=1)
    with Pipeline(settings) as p:
        busy, other = p.open_session(), p.open_session()
        for i in range(300):  # a long backlog
            p.submit(busy, i, _controls(i))
        for i in range(5):
            p.submit(other, i, _controls(i))
        got = _collect(p, other, 5)
        # The other session's frames came while the busy one still had most of its backlog.
        assert p.stats(busy)["frames"] < 200
    assert [f.seq for f in got] == list(range(5))


def test_a_batched_warp_of_several_sessions_equals_their_warps_one_by_one(
    tiny_avatar: Path,
) -> None:
    """worker.render_batch: one batched call for queued render tasks (several sessions) gives
    each session the picture its own call would have, and a missing cache fails alone."""
    import torch

    from engine.pipeline.frame_ring import FrameRing
    from engine.pipeline.messages import BuildTask, FrameDone, RenderTask, TaskFailed
    from engine.pipeline.worker import Worker, WorkerSettings
    from engine.render.avatar import Avatar
    from engine.render.backends.load import load_backend
    from engine.render.backends.stages import FP32

    torch.set_num_threads(1)
    avatar = load_backend(Avatar.load(tiny_avatar).prepare_for_inference(), FP32, threads=1)
    res = avatar.resolution
    ring = FrameRing.create(8, res, res)
    try:
        worker = Worker(WorkerSettings(0, tiny_avatar, "cpu", 1, ring.spec), avatar, ring)
        for session in (1, 2, 3):
            state = _controls(session * 7)
            worker.handle(BuildTask(session, 0, 0, 0, state))
        # Built caches are prepared while the worker is idle (never while a task waits), or by
        # the first warp from them, alone or batched: the pictures are the same either way.
        assert worker.prepare_while_idle(lambda: True) == 0
        assert worker.prepare_while_idle(lambda: False) == 3
        assert all(worker.caches[s][(0, 0)].cache.terms is not None for s in (1, 2, 3))
        for session in (1, 3):
            kept = worker.caches[session][(0, 0)]
            kept.prepared, kept.cache = False, dataclasses.replace(kept.cache, terms=None)

        def task(session: int, slot: int, cache: int = 0) -> RenderTask:
            moved = update(neutral(NAMES), NAMES, expression={"jawOpen": 0.1 * session})
            return RenderTask(session, 0, 1, cache, False, 2, 5, moved, slot, time.monotonic())

        singles = []
        for slot, session in enumerate((1, 2, 3)):
            worker.handle(task(session, slot))
            singles.append(ring.slot(slot).copy())
        tasks = [task(1, 3), task(2, 4), task(9, 5), task(3, 6)]  # session 9 has no cache
        results = worker.render_batch(tasks)
        assert [type(r) for r in results] == [FrameDone, FrameDone, TaskFailed, FrameDone]
        for single, slot in zip(singles, (3, 4, 6), strict=True):
            assert np.abs(ring.slot(slot).astype(int) - single.astype(int)).max() <= 1
        done = [r for r in results if isinstance(r, FrameDone)]
        assert all(r.stages_ms["batch"] == 3 for r in done)
        del singles, done  # views into the ring go before it closes
    finally:
        ring.close()


def test_live_sessions_on_one_worker_are_served_together(tiny_avatar: Path) -> None:
    settings = PipelineSettings(tiny_avatar, Schedule("sequential", 1, 4), mode="live", threads=1)
    with Pipeline(settings) as p:
        sessions = [p.open_session() for _ in range(3)]
        got: dict[int, list[Frame]] = {s: [] for s in sessions}
        deadline = time.monotonic() + GET_TIMEOUT_S * 2
        seq = 0
        while min(len(v) for v in got.values()) < 8 and time.monotonic() < deadline:
            seq += 1
            for s in sessions:
                p.submit(s, seq, _controls(seq))
            time.sleep(1 / 30)
            for s in sessions:
                while (frame := p.get(s, timeout=0)) is not None:
                    got[s].append(frame)
    for s, frames in got.items():
        assert len(frames) >= 8, f"session {s} got {len(frames)} frames"
        assert {f.session for f in frames} == {s}
        seqs = [f.seq for f in frames]
        assert seqs == sorted(seqs)  # in order, the newest state each time


def test_a_warp_too_far_from_its_cache_is_generated_and_becomes_the_cache(
    tiny_avatar: Path,
) -> None:
    import torch

    from engine.pipeline.frame_ring import FrameRing
    from engine.pipeline.messages import BuildTask, RenderTask
    from engine.pipeline.worker import JUMP_LIMIT, Worker, WorkerSettings
    from engine.render.avatar import Avatar

    torch.set_num_threads(1)
    avatar = Avatar.load(tiny_avatar).prepare_for_inference()
    ring = FrameRing.create(8, avatar.resolution, avatar.resolution)
    rest = neutral(NAMES)

    def warp_to(jaw: float, frame: int) -> RenderTask:
        controls = update(rest, NAMES, expression={"jawOpen": jaw})
        return RenderTask(1, 0, frame, 0, False, 4, frame, controls, 0, time.monotonic())

    try:
        for limit in (JUMP_LIMIT, None):
            settings = WorkerSettings(0, tiny_avatar, "cpu", 1, ring.spec, jump_limit=limit)
            worker = Worker(settings, avatar, ring)
            worker.handle(BuildTask(1, 0, 0, 0, rest))
            near = worker.handle(warp_to(0.2, 1))  # within the limit: a warp
            far = worker.handle(warp_to(1.0, 2))  # the mouth wide open at once
            after = worker.handle(warp_to(0.95, 3))  # near the new state
            assert not near.generated and near.distance == 4
            if limit is None:
                assert not far.generated and not after.generated
            else:
                assert far.generated and far.distance == 0 and "generator" in far.stages_ms
                assert not after.generated  # warped from the re-anchored cache
    finally:
        ring.close()


def test_live_frames_warp_from_the_newest_cache_and_a_jump_starts_one_early(
    tiny_avatar: Path,
) -> None:
    # NUM_WARPS 1000: no cache is ever old enough to be rebuilt by age during the test, so a new
    # one after the jump can only have been started by the drift.
    settings = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 1000), mode="live", threads=1)
    rest = neutral(NAMES)
    opened = update(rest, NAMES, expression={"jawOpen": 1.0})
    frames: list[Frame] = []
    with Pipeline(settings) as p:
        session = p.open_session()
        seq = 0
        deadline = time.monotonic() + GET_TIMEOUT_S * 2

        def from_the_jump_cache() -> bool:  # a build at nice 10 on a busy machine is slow
            return any(f.seq > 20 and f.drift == 0.0 for f in frames)

        while (len(frames) < 60 or not from_the_jump_cache()) and time.monotonic() < deadline:
            seq += 1
            p.submit(session, seq, rest if seq <= 20 else opened)
            time.sleep(1 / 30)
            while (frame := p.get(session, timeout=0)) is not None:
                frames.append(frame)
    assert len(frames) >= 60, f"{len(frames)} frames"
    assert all("generator" not in f.stages_ms for f in frames)  # no re-anchors
    before = [f for f in frames if f.seq <= 20]
    after = [f for f in frames if f.seq > 20]
    # The rest state from the rest cache: its generator's own picture, not warped.
    assert all(f.drift == 0.0 and f.generated and "warp" not in f.stages_ms for f in before)
    assert after[0].drift == pytest.approx(1.0)  # the jump, warped from the rest cache
    # ... until the cache started at the jump is done: then from it, and on the other worker.
    settled = [f for f in after if f.drift == 0.0]
    assert settled, "no cache was started from the opened mouth"
    assert settled[0].worker != frames[0].worker
    assert all(f.drift == 0.0 for f in after[after.index(settled[0]) :])


def _live_by_need(avatar: Path) -> Pipeline:
    """Two one-thread workers, live by need; NUM_WARPS 1000: no cache is rebuilt by age."""
    return Pipeline(PipelineSettings(avatar, Schedule("parallel", 2, 1000), mode="live", threads=1))


def _rest_then(p: Pipeline, expression: dict[str, float]) -> tuple[int, Frame, Frame]:
    """A new session at rest (its first frame generated), then one message moving `expression`:
    the session, the rest's frame and the move's first frame (seq 2)."""
    session = p.open_session()
    rest = neutral(NAMES)
    p.submit(session, 1, rest)
    first = p.get(session, timeout=GET_TIMEOUT_S)
    assert first is not None and first.generated
    p.submit(session, 2, update(rest, NAMES, expression=expression))
    moved = p.get(session, timeout=GET_TIMEOUT_S)
    assert moved is not None and moved.seq == 2
    return session, first, moved


def test_a_still_control_is_rendered_again_from_the_cache_made_for_it(tiny_avatar: Path) -> None:
    # A page sends its sliders only when they move: one jawOpen message, then nothing. Its frame
    # is warped from the rest cache; once the cache started at the jump is done, the same control
    # comes again from it, so the picture does not stay a mouth stretched from a closed one.
    with _live_by_need(tiny_avatar) as p:
        session, first, jump = _rest_then(p, {"jawOpen": 1.0})
        assert jump.drift == pytest.approx(1.0)
        again = p.get(session, timeout=GET_TIMEOUT_S)
        assert again is not None and again.seq == 2 and again.drift == 0.0
        assert again.worker != first.worker  # from the cache built on the other worker
        assert again.generated and "warp" not in again.stages_ms  # that cache's own picture
        # Then nothing more: a picture from its own cache is not refreshed.
        assert p.get(session, timeout=1.0) is None


def test_a_still_control_near_its_cache_gets_a_cache_of_its_own(tiny_avatar: Path) -> None:
    # A small slider move (well within the jump limit) starts no cache while controls arrive;
    # once they have settled, one is built from them and the still picture becomes the
    # generator's own: a warp was trained from 4 frames apart and draws a still face worse.
    with _live_by_need(tiny_avatar) as p:
        session, first, near = _rest_then(p, {"jawOpen": 0.1})
        assert near.drift == pytest.approx(0.1)
        assert "warp" in near.stages_ms
        # Its cache is the rest's, started from a control that came before this one.
        assert 0 < near.age_ms <= (near.submitted - first.submitted) * 1000.0 + 1e-6
        later: list[Frame] = []
        deadline = time.monotonic() + GET_TIMEOUT_S
        while time.monotonic() < deadline and not (later and later[-1].drift == 0.0):
            if (frame := p.get(session, timeout=0.5)) is not None:
                later.append(frame)
        assert later and all(f.seq == 2 for f in later)
        own = later[-1]
        assert own.drift == 0.0 and own.generated and "warp" not in own.stages_ms
        assert own.age_ms == 0.0
        assert own.worker != first.worker  # the settled controls' cache, on the next worker
        assert p.get(session, timeout=1.0) is None  # and then nothing more


def test_a_worker_builds_in_the_background_and_renders_wait_for_their_cache(
    tiny_avatar: Path,
) -> None:
    import torch

    from engine.pipeline.frame_ring import FrameRing
    from engine.pipeline.messages import (
        BuildDone,
        BuildTask,
        DropSession,
        FrameDone,
        RenderTask,
        SessionDropped,
        TaskFailed,
    )
    from engine.pipeline.worker import Worker, WorkerSettings
    from engine.render.avatar import Avatar

    torch.set_num_threads(1)
    avatar = Avatar.load(tiny_avatar).prepare_for_inference()
    ring = FrameRing.create(8, avatar.resolution, avatar.resolution)
    sent: list[object] = []
    settings = WorkerSettings(0, tiny_avatar, "cpu", 1, ring.spec, background_builds=True)
    worker = Worker(settings, avatar, ring, sent.append)
    moved = update(_controls(2), NAMES, expression={"jawOpen": 0.1})  # near cache 2: a warp
    try:
        for cache in range(3):  # queued on the build thread; answered from there
            assert worker.handle(BuildTask(1, 0, cache, cache, _controls(cache))) is None
        done = worker.handle(RenderTask(1, 0, 5, 2, False, 3, 5, moved, 0, time.monotonic()))
        assert isinstance(done, FrameDone) and not done.generated
        assert done.cache_ready <= done.started  # its cache's build was waited for, not timed
        # The build thread prepared the caches before answering: no warp pays for that.
        assert all(kept.prepared for kept in worker.caches[1].values())
        # Cache 0 was dropped by the time the render ran (two are kept a session): a clear error.
        with pytest.raises(LookupError, match="no cache 0"):
            worker.handle(RenderTask(1, 0, 6, 0, False, 6, 6, moved, 1, time.monotonic()))
        bad = dataclasses.replace(neutral(NAMES), expression=(0.0,) * 3)
        assert worker.handle(BuildTask(1, 0, 3, 3, bad)) is None
        dropped = worker.handle(DropSession(1))  # waits for the session's builds first
        assert isinstance(dropped, SessionDropped) and dropped.sessions_held == 0
        assert [type(m) for m in sent] == [BuildDone, BuildDone, BuildDone, TaskFailed]
        assert [m.cache for m in sent] == [0, 1, 2, 3]  # type: ignore[attr-defined]
        assert 1 not in worker.caches
    finally:
        worker.close()
        ring.close()


def test_what_a_frame_past_the_jump_limit_gets_is_a_setting(tiny_avatar: Path) -> None:
    by_need = PipelineSettings(tiny_avatar, Schedule("parallel", 2, 4), mode="live")
    assert by_need.builds_by_need and by_need.worker_jump_limit is None  # caches start early
    generate = dataclasses.replace(by_need, jumps="generate")
    assert generate.worker_jump_limit == by_need.jump_limit  # the worker generates such frames
    replay = dataclasses.replace(by_need, mode="replay")
    assert not replay.builds_by_need and replay.worker_jump_limit == by_need.jump_limit
    one = PipelineSettings(tiny_avatar, Schedule("sequential", 1, 4), mode="live")
    assert one.worker_jump_limit == one.jump_limit
    with pytest.raises(ValueError, match="jumps must be one of"):
        PipelineSettings(tiny_avatar, Schedule("parallel", 2, 4), jumps="skip")
