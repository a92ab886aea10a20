"""The bridge between the asyncio server and the engine's worker pipeline.

`engine.pipeline.dispatcher` is synchronous and thread-based; the event loop must never wait on it. Starting
and stopping the pool run in the default executor; frames come back by `Pipeline.subscribe`, whose
callback only schedules the session's handler on the loop (`call_soon_threadsafe`). Submitting a
control takes the pipeline's lock for microseconds (it never waits for a render).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from engine.controls import Controls
from engine.pipeline.dispatcher import Frame, Pipeline, PipelineSettings


class Bridge:
    """One pipeline, used from one event loop."""

    def __init__(self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> None:
        self.pipeline = pipeline
        self._loop = loop

    @staticmethod
    async def start(settings: PipelineSettings) -> Bridge:
        """Spawn the workers (seconds: each loads the avatar) without blocking the loop."""
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(None, Pipeline(settings).start)
        return Bridge(pipeline, loop)

    async def close(self) -> None:
        await self._loop.run_in_executor(None, self.pipeline.close)

    @property
    def resolution(self) -> int:
        return self.pipeline.resolution

    def open_session(self, deliver: Callable[[Frame], None]) -> int:
        """A new pipeline session whose frames are passed to `deliver` on the event loop."""
        loop = self._loop

        def hand_over(frame: Frame) -> None:  # on the pipeline's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(deliver, frame)

        session = self.pipeline.open_session()
        self.pipeline.subscribe(session, hand_over)
        return session

    def submit(self, session: int, seq: int, controls: Controls) -> None:
        self.pipeline.submit(session, seq, controls)

    def close_session(self, session: int) -> None:
        self.pipeline.close_session(session)

    def workers(self) -> list[dict[str, Any]]:
        return self.pipeline.worker_states()
