"""engine.pipeline.schedule: which worker makes which frame, from which cache."""

from __future__ import annotations

import pytest

from engine.pipeline.schedule import EARLY_BUILD, Schedule

FRAMES = 200
SETTINGS = [
    Schedule("generator"),
    Schedule("generator", workers=2),
    *(Schedule("sequential", 1, w) for w in (1, 2, 4)),
    *(Schedule("parallel", n, w) for n in (1, 2, 3) for w in (1, 2, 4)),
]


def _tasks(schedule: Schedule) -> dict[int, list[tuple[str, int, int]]]:
    """Each worker's task list in dispatch order: ("build", cache, frame) / ("out", cache, frame)."""
    tasks: dict[int, list[tuple[str, int, int]]] = {w: [] for w in range(schedule.workers)}
    for f in range(FRAMES):
        build = schedule.build(f)
        if build is not None:
            tasks[build.worker].append(("build", build.cache, f))
        step = schedule.step(f)
        tasks[step.worker].append(("out", step.cache, f))
    return tasks


@pytest.mark.parametrize("schedule", SETTINGS, ids=lambda s: s.label)
def test_a_worker_only_uses_caches_it_finished_building(schedule: Schedule) -> None:
    for worker, tasks in _tasks(schedule).items():
        built: set[int] = set()
        for kind, cache, frame in tasks:
            if kind == "build":
                assert schedule.builder(cache) == worker
                assert schedule.cache_frame(cache) == frame
                built.add(cache)
            else:
                assert cache in built, f"worker {worker} uses cache {cache} at frame {frame}"


@pytest.mark.parametrize("schedule", SETTINGS, ids=lambda s: s.label)
def test_steps_are_consistent(schedule: Schedule) -> None:
    for f in range(FRAMES):
        step = schedule.step(f)
        assert step.frame == f and step.distance == f - schedule.cache_frame(step.cache) >= 0
        assert step.generated == (step.distance == 0)
        if step.generated:  # a generated frame is its own cache's frame, built just now
            build = schedule.build(f)
            assert build is not None and build.cache == step.cache


@pytest.mark.parametrize("warps", [1, 2, 4])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_role_rotation_follows_num_warps(workers: int, warps: int) -> None:
    schedule = Schedule("parallel", workers, warps)
    builds = [b for f in range(FRAMES) if (b := schedule.build(f)) is not None]
    assert [b.frame for b in builds] == list(range(0, FRAMES, warps))  # every NUM_WARPS frames
    assert [b.worker for b in builds] == [i % workers for i in range(len(builds))]  # next worker
    steady = [schedule.step(f) for f in range(workers * warps, FRAMES)]  # after the warm-up
    assert {s.distance for s in steady} == set(range((workers - 1) * warps, workers * warps))
    for s in steady:  # a cache serves exactly one block of NUM_WARPS frames
        assert s.frame // warps == s.cache + workers - 1
    if workers > 1:
        assert not any(s.generated for s in steady)  # every output frame is a warp


def test_sequential_and_generator_shapes() -> None:
    seq = Schedule("sequential", 1, 2)
    assert [(s.generated, s.distance) for s in map(seq.step, range(6))] == [
        (True, 0), (False, 1), (False, 2), (True, 0), (False, 1), (False, 2),
    ]  # fmt: skip
    gen = Schedule("generator", workers=2)
    assert [gen.step(f).worker for f in range(4)] == [0, 1, 0, 1]
    assert all(gen.step(f).generated for f in range(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "fast"}, "schedule must be"),
        ({"name": "generator", "num_warps": 2}, "num_warps must be 0"),
        ({"name": "parallel", "workers": 2, "num_warps": 0}, "num_warps >= 1"),
        ({"name": "sequential", "workers": 2, "num_warps": 1}, "one worker"),
        ({"name": "parallel", "workers": 0, "num_warps": 1}, "workers must be"),
        ({"name": "parallel", "workers": 1, "num_warps": -1}, "non-negative"),
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)  # type: ignore[arg-type]


def test_live_builds_start_by_age_or_by_drift_one_at_a_time() -> None:
    plan = Schedule("parallel", 2, 4)
    assert plan.builds_by_need
    assert not Schedule("parallel", 1, 4).builds_by_need
    assert not Schedule("sequential", 1, 4).builds_by_need
    assert not Schedule("generator", 2).builds_by_need
    first = plan.live_build(7, issued=-1, built=-1, built_frame=0, drift=0.0, limit=0.3)
    assert first is not None and (first.cache, first.worker, first.frame) == (0, 0, 7)
    # One at a time: cache 3 is building, so nothing starts however stale or far cache 2 is.
    assert plan.live_build(40, issued=3, built=2, built_frame=0, drift=9.0, limit=0.3) is None
    # By age: the next cache once the newest is NUM_WARPS frames old, on the next worker.
    assert plan.live_build(13, issued=2, built=2, built_frame=10, drift=0.0, limit=0.3) is None
    by_age = plan.live_build(14, issued=2, built=2, built_frame=10, drift=0.0, limit=0.3)
    assert by_age is not None and (by_age.cache, by_age.worker) == (3, 1)
    # By drift: sooner once the controls have moved past half the jump limit from the newest.
    early = EARLY_BUILD * 0.3
    assert plan.live_build(11, 2, 2, 10, drift=early, limit=0.3) is None
    by_drift = plan.live_build(11, 2, 2, 10, drift=early + 0.01, limit=0.3)
    assert by_drift is not None and (by_drift.cache, by_drift.worker) == (3, 1)
    assert plan.live_build(11, 2, 2, 10, drift=5.0, limit=None) is None  # no limit: by age only
    # Settled: controls left still away from the newest cache's get a cache of their own,
    # still one at a time.
    settled = plan.live_build(11, 2, 2, 10, drift=0.01, limit=0.3, settled=True)
    assert settled is not None and (settled.cache, settled.worker) == (3, 1)
    assert plan.live_build(11, 3, 2, 10, drift=0.01, limit=0.3, settled=True) is None


def test_a_live_frame_warps_from_the_newest_cache_on_its_builder() -> None:
    plan = Schedule("parallel", 3, 4)
    step = plan.live_step(20, newest=5, newest_frame=17, worker=1)
    assert (step.worker, step.cache, step.distance, step.generated) == (1, 5, 3, False)
    own = plan.live_step(17, newest=5, newest_frame=17, worker=1)  # the first cache's own frame
    assert own.generated and own.distance == 0
