"""Why each session ended, for whoever asks after the fact or waits for it.

A node that ends a session itself says why on the session's data channel. A node that dies says
nothing: the front, which notices, is the one that tells. Both record the reason here, and
`GET /api/sessions/{sid}/events` streams it to the page, so that a page learns why its video stopped
within the time the server takes to notice, not the ~30 s a browser's ICE consent check takes.
"""

from __future__ import annotations

import asyncio
import collections

KEPT = 1024  # ended sessions remembered for a late listener


class SessionEnds:
    """Open sessions' futures and the reasons of recently ended ones (on one event loop)."""

    def __init__(self) -> None:
        self._open: dict[str, asyncio.Future[str]] = {}
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()

    def opened(self, sid: str) -> None:
        self._open.setdefault(sid, asyncio.get_running_loop().create_future())

    def ended(self, sid: str, reason: str) -> None:
        """Record `reason` once (the first caller's stands) and wake the listeners."""
        if sid in self._ended:
            return
        future = self._open.pop(sid, None)
        if future is not None and not future.done():
            future.set_result(reason)
        self._ended[sid] = reason
        while len(self._ended) > KEPT:
            self._ended.popitem(last=False)

    def known(self, sid: str) -> bool:
        return sid in self._open or sid in self._ended

    def open_ids(self) -> list[str]:
        return list(self._open)

    def reason(self, sid: str) -> str | None:
        return self._ended.get(sid)

    def recent(self, limit: int = KEPT) -> dict[str, str]:
        """The reasons of the `limit` sessions that ended last."""
        return dict(list(self._ended.items())[-limit:])

    async def wait(self, sid: str) -> str:
        """The reason `sid` ended, waiting until it does (KeyError: no such session here)."""
        if sid in self._ended:
            return self._ended[sid]
        return await asyncio.shield(self._open[sid])
