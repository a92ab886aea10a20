"""Stills in a niced child process: the same picture as rendering in-process, a bounded queue
that refuses at once, a killed child that fails only its own still and is replaced, and a close
that leaves nothing behind. The child is paused with SIGSTOP where a test needs stills to stay in
flight, so nothing depends on how fast this machine renders."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from engine.controls import Controls, update
from engine.render.avatar import Avatar
from server.stills import NICENESS, StillRenderer, StillsBusy
from tests.conftest import save_untrained_avatar

pytestmark = pytest.mark.slow

WAIT_S = 120.0  # generous: a slow, busy 2-core machine


@pytest.fixture(scope="module")
def tiny_avatar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_avatar(tmp_path_factory.mktemp("avatar") / "tiny.pt")


@pytest.fixture(scope="module")
def patterned_avatar(tiny_avatar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny avatar with a random background and noised weights (seed 1): the untrained one
    draws an almost even grey, which any picture would match to a grey level."""
    avatar = Avatar.load(tiny_avatar)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in avatar.named_parameters():
            if name == "background":
                parameter.copy_(torch.rand(parameter.shape, generator=generator))
            elif not name.startswith("head."):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp("avatar") / "patterned.pt"
    avatar.save(path)
    return path


def _controls(avatar: Avatar) -> Controls:
    """Not the rest: an expression, a turned head and an orbited view."""
    names = avatar.expression_names
    return update(
        avatar.rest,
        names,
        expression={names[0]: 0.7, names[-1]: 0.3},
        pose={"yaw": 12.0, "pitch": -5.0},
        view={"yaw": 8.0},
    )


def _picture(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _pid(renderer: StillRenderer) -> int:
    pid = renderer.stats()["pid"]
    assert isinstance(pid, int)
    return pid


def _thread_niceness(pid: int) -> list[int]:
    """The nice value of every thread of `pid` (Linux keeps one per thread)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.append(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def _reaped(pid: int) -> bool:
    """Gone and waited for: neither running nor a zombie."""
    return not psutil.pid_exists(pid)


def _exited(pid: int) -> bool:
    """Whether our child `pid` has exited (all its threads), without reaping it: that is left to
    its owner. A killed process's /proc says zombie as soon as its main thread is gone, before it
    can be waited for."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _children() -> list[psutil.Process]:
    """This process's children, less multiprocessing's resource tracker (it outlives spawns)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_still_is_the_in_process_picture_from_a_niced_child(
    patterned_avatar: Path,
) -> None:
    avatar = Avatar.load(patterned_avatar).prepare_for_inference()
    controls = _controls(avatar)
    expected = avatar.render(controls)  # (H, W, 3) uint8
    assert expected.std() > 10  # a picture with something in it
    renderer = await StillRenderer.start(patterned_avatar)
    try:
        picture = _picture(await renderer.render_png(controls))
        assert picture.shape == (avatar.resolution, avatar.resolution, 3)
        difference = np.abs(picture.astype(np.int16) - expected.astype(np.int16))
        assert difference.max() <= 1
        rest = _picture(await renderer.render_png(avatar.rest))
        assert np.abs(rest.astype(np.int16) - picture.astype(np.int16)).max() > 1  # the controls

        pid = _pid(renderer)
        assert pid != os.getpid()
        assert psutil.Process(pid).nice() == NICENESS == 19
        assert set(_thread_niceness(pid)) == {NICENESS}  # torch's threads too, not only the main
        if hasattr(os, "SCHED_IDLE"):  # Linux: the idle class, every thread
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            assert {os.sched_getscheduler(t) for t in tids} == {os.SCHED_IDLE}
        stats = renderer.stats()
        assert stats["rendered"] == 2
        assert stats["queued"] == stats["rendering"] == stats["refused"] == 0
        assert stats["failed"] == stats["restarts"] == 0
    finally:
        await renderer.close()


async def test_a_full_queue_refuses_exactly_the_overflow_at_once(tiny_avatar: Path) -> None:
    avatar = Avatar.load(tiny_avatar)
    limit, extra = 3, 2
    renderer = await StillRenderer.start(tiny_avatar, queue_limit=limit)
    pid = _pid(renderer)
    os.kill(pid, signal.SIGSTOP)  # nothing finishes until SIGCONT: the queue stays full
    try:
        tasks = [
            asyncio.create_task(renderer.render_png(avatar.rest)) for _ in range(limit + extra)
        ]
        await asyncio.sleep(0)  # every task runs to its first wait
        await asyncio.sleep(0)
        refused = tasks[limit:]
        assert all(t.done() for t in refused), "a refusal waited"
        for t in refused:
            with pytest.raises(StillsBusy) as busy:
                t.result()
            assert busy.value.retry_after_s == 1
        assert not any(t.done() for t in tasks[:limit])
        stats = renderer.stats()
        assert stats["queued"] == limit
        assert stats["refused"] == extra
        with pytest.raises(StillsBusy):  # still full
            await renderer.render_png(avatar.rest)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        pictures = [_picture(png) for png in await asyncio.gather(*tasks[:limit])]
        assert all(p.shape == (avatar.resolution, avatar.resolution, 3) for p in pictures)
        _picture(await renderer.render_png(avatar.rest))  # room again
        stats = renderer.stats()
        assert stats["rendered"] == limit + 1
        assert stats["refused"] == extra + 1
        assert stats["queued"] == 0
    finally:
        await renderer.close()


async def test_a_killed_child_fails_its_still_and_the_next_still_restarts_it(
    tiny_avatar: Path,
) -> None:
    avatar = Avatar.load(tiny_avatar)
    renderer = await StillRenderer.start(tiny_avatar)
    try:
        first = _pid(renderer)
        os.kill(first, signal.SIGSTOP)  # hold the still in the child
        in_flight = asyncio.create_task(renderer.render_png(avatar.rest))
        await _until(lambda: renderer.stats()["rendering"] == 1, "the still to reach the child")
        os.kill(first, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=rf"process {first} died rendering a still"):
            await in_flight
        stats = renderer.stats()
        assert stats["failed"] == 1
        assert stats["pid"] is None
        assert _reaped(first)

        picture = _picture(await renderer.render_png(avatar.rest))  # a new child
        assert picture.shape == (avatar.resolution, avatar.resolution, 3)
        second = _pid(renderer)
        assert second != first
        assert renderer.stats()["restarts"] == 1

        os.kill(second, signal.SIGKILL)  # killed while idle: the next still restarts it too
        await _until(lambda: _exited(second), "the child to exit")
        _picture(await renderer.render_png(avatar.rest))
        stats = renderer.stats()
        assert stats["restarts"] == 2
        assert stats["rendered"] == 2
        assert stats["failed"] == 1
        assert stats["pid"] not in (first, second)
    finally:
        await renderer.close()


async def test_close_leaves_no_process_pipe_or_thread(tiny_avatar: Path) -> None:
    avatar = Avatar.load(tiny_avatar)
    resource_tracker.ensure_running()  # the first spawn starts it, and its pipe stays open
    fds = psutil.Process().num_fds()
    renderer = await StillRenderer.start(tiny_avatar)
    pid = _pid(renderer)
    _picture(await renderer.render_png(avatar.rest))
    os.kill(pid, signal.SIGSTOP)  # a still that would never finish: close must not wait on it
    in_flight = asyncio.create_task(renderer.render_png(avatar.rest))
    await _until(lambda: renderer.stats()["rendering"] == 1, "the still to reach the child")
    queued = asyncio.create_task(renderer.render_png(avatar.rest))
    await asyncio.sleep(0)
    await asyncio.gather(renderer.close(), renderer.close())  # idempotent, also at once
    await renderer.close()
    for task in (in_flight, queued):
        with pytest.raises(RuntimeError, match="closed"):
            await task
    assert _reaped(pid)
    assert not _children()
    assert not [t for t in threading.enumerate() if t.name.startswith("stills")]
    assert psutil.Process().num_fds() == fds
    assert renderer.stats()["pid"] is None
    with pytest.raises(RuntimeError, match="closed"):
        await renderer.render_png(avatar.rest)


async def test_a_file_that_is_not_an_avatar_fails_start_and_leaves_no_child(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        await StillRenderer.start(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not an avatar")
    with pytest.raises(RuntimeError, match="could not load"):
        await StillRenderer.start(bad)
    assert not _children()
    assert not [t for t in threading.enumerate() if t.name.startswith("stills")]


ORPHAN_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from server.stills import StillRenderer

async def main() -> None:
    renderer = await StillRenderer.start(Path(sys.argv[1]))
    print(renderer.stats()["pid"], flush=True)
    os._exit(0)  # no close(), no atexit: as if killed

asyncio.run(main())
"""


async def test_the_child_leaves_when_its_parent_dies(tiny_avatar: Path) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ORPHAN_SCRIPT,
        str(tiny_avatar),
        cwd=Path(__file__).resolve().parents[1],
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(parent.communicate(), WAIT_S)
    assert parent.returncode == 0
    child = int(out.split()[-1])

    def ended() -> bool:  # the orphan is not ours to wait for: a zombie has ended too
        try:
            return psutil.Process(child).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.NoSuchProcess:
            return True

    await _until(ended, "the orphaned child to leave")


async def test_beside_live_sessions_stills_keep_to_their_share_of_a_core(
    tiny_avatar: Path,
) -> None:
    """While `live()` says a session is open, a still waits until its predecessor's CPU time is
    LIVE_SHARE of the time since that one began; with none open, stills do not wait."""
    live = False
    renderer = await StillRenderer.start(tiny_avatar, queue_limit=4, live=lambda: live)
    try:
        avatar = Avatar.load(tiny_avatar)
        for _ in range(3):
            await renderer.render_png(avatar.rest)
        assert renderer.stats()["paced_s"] == 0.0
        live = True
        started = time.monotonic()
        for _ in range(4):
            await renderer.render_png(avatar.rest)
        stats = renderer.stats()
        paced = stats["paced_s"]
        assert isinstance(paced, float) and paced > 0.0
        assert time.monotonic() - started >= paced
    finally:
        await renderer.close()
