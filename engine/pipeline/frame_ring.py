"""A ring of preallocated uint8 frame buffers in shared memory: how pictures leave the workers.

The pipeline creates one ring per worker; the worker writes each finished picture into the slot its
task names, and only the slot number and a few fields of metadata cross a queue. The parent owns the
segment: it creates and unlinks it. If the parent dies without unlinking, Python's resource tracker
(a separate process that outlives it) unlinks the segment, so no /dev/shm entry is left behind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

CHANNELS = 3  # RGB


@dataclass(frozen=True)
class RingSpec:
    """What a worker needs to attach: the segment's name and the ring's shape."""

    name: str
    slots: int
    height: int
    width: int

    @property
    def slot_bytes(self) -> int:
        return self.height * self.width * CHANNELS


class FrameRing:
    """`slots` frames of (height, width, 3) uint8 in one shared-memory segment."""

    def __init__(self, memory: shared_memory.SharedMemory, spec: RingSpec, owner: bool) -> None:
        self._memory = memory
        self.spec = spec
        self.owner = owner
        buffer = memory.buf
        assert buffer is not None
        self._frames = np.ndarray(
            (spec.slots, spec.height, spec.width, CHANNELS), dtype=np.uint8, buffer=buffer
        )  # (S, H, W, 3) view of the segment

    @staticmethod
    def create(slots: int, height: int, width: int) -> FrameRing:
        """A new zeroed ring, owned (and later unlinked) by the caller."""
        if slots < 1 or height < 1 or width < 1:
            raise ValueError(f"a frame ring needs positive sizes, got {slots}x{height}x{width}")
        size = slots * height * width * CHANNELS
        memory = shared_memory.SharedMemory(create=True, size=size)
        return FrameRing(memory, RingSpec(memory.name, slots, height, width), owner=True)

    @staticmethod
    def attach(spec: RingSpec) -> FrameRing:
        """The ring another process created (a worker's side)."""
        memory = shared_memory.SharedMemory(name=spec.name)
        if memory.size < spec.slots * spec.slot_bytes:
            memory.close()
            raise ValueError(f"shared memory {spec.name} is smaller than its ring spec")
        return FrameRing(memory, spec, owner=False)

    def slot(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 view of slot `index` (no copy: valid until the ring is closed)."""
        if not 0 <= index < self.spec.slots:
            raise IndexError(f"slot {index} outside the ring's {self.spec.slots}")
        return self._frames[index]

    def write(self, index: int, picture: np.ndarray) -> None:
        expected = (self.spec.height, self.spec.width, CHANNELS)
        if picture.shape != expected or picture.dtype != np.uint8:
            raise ValueError(
                f"expected a {expected} uint8 picture, got {picture.shape} {picture.dtype}"
            )
        self.slot(index)[...] = picture

    def close(self) -> None:
        """Detach; the owner also unlinks the segment. Safe to call twice."""
        if self._memory is None:
            return
        del self._frames  # the view must go before the buffer can be released
        memory, self._memory = self._memory, None  # type: ignore[assignment]
        memory.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):  # already unlinked elsewhere
                memory.unlink()
