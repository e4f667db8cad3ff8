"""Progress from a GPU loop without making the host wait for every step.

On a GPU, launching a denoising step takes the host a few milliseconds while the device
needs longer to run it; the host runs ahead.  Reporting a step as done when it was only
*launched* would fill the progress bar at once and then stall; calling
`torch.cuda.synchronize()` after each step to report honestly would serialise host and
device and cost the launch time of every step.

`StepPacer` records a device event after each launched step and reports a step once its
event has completed, which it learns by polling (`Event.query()`, non-blocking).  To keep
Cancel prompt it lets the host run at most `lead` steps ahead: only then does it wait, on
the oldest event, not on the whole device.  On the CPU there is no queue: a step is done
when its call returns, and is reported at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

#: Steps the host may run ahead of the GPU.  Two keeps the GPU fed (the next step is
#: always queued) while a Cancel lands within about two steps of device time.
DEFAULT_LEAD = 2


class StepPacer:
    """Calls `report(step, total)` for each step once the device has finished it."""

    def __init__(
        self,
        report: Callable[[int, int], None],
        *,
        make_event: Callable[[], Any] | None = None,
        lead: int = DEFAULT_LEAD,
    ) -> None:
        """`make_event()` returns an object with `record()`, `query()` and `synchronize()`
        (a `torch.cuda.Event`); None means the device runs synchronously (CPU)."""
        if lead < 1:
            raise ValueError("lead must be at least 1")
        self._report = report
        self._make_event = make_event
        self._lead = lead
        self._pending: deque[tuple[int, int, Any]] = deque()

    @classmethod
    def for_device(cls, device: str, report: Callable[[int, int], None], lead: int = DEFAULT_LEAD) -> StepPacer:
        if device.split(":")[0] == "cuda":
            import torch

            # blocking=True: a wait sleeps instead of spinning a core that the daemon's
            # socket thread (which sends these progress events) needs.
            return cls(report, make_event=lambda: torch.cuda.Event(blocking=True), lead=lead)
        return cls(report, lead=lead)

    def launched(self, step: int, total: int) -> None:
        """The host has queued `step`; report every step the device has finished since."""
        if self._make_event is None:
            self._report(step, total)
            return
        event = self._make_event()
        event.record()
        self._pending.append((step, total, event))
        while self._pending and self._pending[0][2].query():
            self._flush_one()
        while len(self._pending) > self._lead:
            self._pending[0][2].synchronize()
            self._flush_one()

    def drain(self) -> None:
        """Wait for the remaining steps and report them (end of the loop)."""
        while self._pending:
            self._pending[0][2].synchronize()
            self._flush_one()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _flush_one(self) -> None:
        step, total, _ = self._pending.popleft()
        self._report(step, total)  # may raise JobCancelled: the loop stops there
