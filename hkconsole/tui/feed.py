"""The feed: the console's one connection to the service.

One asyncio worker subscribes to events, resyncs with full snapshots periodically and
after any gap, and backs off while the service is away. It writes the model and posts
messages; the views only read the model. Every outcome goes through this widget's queue,
so the App sees them in the order they happened.
"""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio
from textual import work
from textual.message import Message
from textual.widget import Widget

from hkconsole.client import AsyncClient, ServiceError, apply_curve
from hkconsole.tui.keys import REFRESH_CHOICES
from hkconsole.tui.model import ConsoleModel
from hkservice.protocol import EVENT_ENDED, unpack

BACKOFF_MAX = 10.0
HEARTBEAT_TIMEOUT = 6.0
# How many finished units the console keeps (`housekeeping.history`, newest first).
HISTORY_SHOWN = 200
# Units ending in a burst are fetched once: this long after the first one ended.
HISTORY_SETTLE = 0.5


class Feed(Widget):
    DEFAULT_CSS = "Feed { display: none; }"

    class Connected(Message):
        """The service answers: config and a first snapshot are in the model."""

    class Disconnected(Message):
        def __init__(self, status: str, lost: bool) -> None:
            super().__init__()
            self.status = status  # for the header: what happened, and the next retry
            self.lost = lost  # True once, when a working connection broke

    class Changed(Message):
        """The model changed: a hint (the model may have moved on since it was posted)."""

    def __init__(self, client: AsyncClient, model: ConsoleModel) -> None:
        super().__init__()
        self.client = client
        self.model = model
        self.interval = 2.0
        self.connected = False
        self._resync_now = asyncio.Event()
        self._changed_posted = False
        # When to fetch the history next (monotonic), None: nothing ended since.
        self._history_due: float | None = None

    def resync_soon(self) -> None:
        self._resync_now.set()

    def next_interval(self) -> None:
        """`r`: the next refresh interval (REFRESH_CHOICES, round), and a resync now, so
        the next one comes at the new interval, not the old one."""
        index = REFRESH_CHOICES.index(self.interval) if self.interval in REFRESH_CHOICES else 0
        self.interval = REFRESH_CHOICES[(index + 1) % len(REFRESH_CHOICES)]
        self.resync_soon()

    def changes_taken(self) -> None:
        """Called by whoever handled `Changed`: the next change posts a new one."""
        self._changed_posted = False

    def _post_changed(self) -> None:
        # One pending `Changed` at a time: a burst of events is one redraw.
        if not self._changed_posted:
            self._changed_posted = True
            self.post_message(self.Changed())

    @work(exclusive=True, group="feed", exit_on_error=False)
    async def run(self) -> None:
        backoff = 0.5
        attempt = 0
        while True:
            try:
                await self._follow()
            except (TimeoutError, ServiceError, zmq.ZMQError, OSError) as exc:
                message = getattr(exc, "message", str(exc))
                lost = self.connected
                self.connected = False
                attempt += 1
                for left in range(int(backoff), 0, -1):
                    status = f"DISCONNECTED: retry {attempt} in {left}s ({message})"
                    self.post_message(self.Disconnected(status, lost))
                    lost = False
                    await asyncio.sleep(1)
                # Said while the attempt runs (it may take the client's whole timeout),
                # so the countdown never sits at `in 1s` for longer than a second.
                status = f"DISCONNECTED: retrying {attempt}… ({message})"
                self.post_message(self.Disconnected(status, lost))
                if backoff < 1:
                    await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                self.client.close()
                continue
            backoff, attempt = 0.5, 0

    async def _follow(self) -> None:
        config = await self.client.call("service.config")
        self.model.set_config(config)
        ctx = zmq.asyncio.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        apply_curve(sub, self.client.keys)  # a CURVE service's events need the keys too
        sub.connect(config["events-endpoint"])
        try:
            await self.resync()
            await self.fetch_history()
            self.connected = True
            self.post_message(self.Connected())
            last_heard = time.monotonic()
            next_resync = time.monotonic() + self.interval
            while True:
                wake = min(next_resync, self._history_due or next_resync)
                timeout = max(0.0, wake - time.monotonic())
                if await sub.poll(int(min(timeout, 0.5) * 1000)):
                    topic, body = await sub.recv_multipart()
                    last_heard = time.monotonic()
                    changed, gap = self.model.apply_event(topic.decode(), unpack(body))
                    if gap:
                        next_resync = 0.0
                    elif changed or topic.startswith(b"resource."):
                        self._post_changed()
                    if topic == EVENT_ENDED.encode():
                        self.history_soon()
                if time.monotonic() - last_heard > HEARTBEAT_TIMEOUT:
                    raise ServiceError("EHOSTDOWN", "no heartbeat from the service")
                if time.monotonic() >= next_resync or self._resync_now.is_set():
                    self._resync_now.clear()
                    await self.resync()
                    next_resync = time.monotonic() + self.interval
                if self._history_due is not None and time.monotonic() >= self._history_due:
                    await self.fetch_history()
        finally:
            sub.close(linger=0)

    async def resync(self) -> None:
        result = await self.client.call("housekeeping.list")
        status = await self.client.call("resource.status")
        before = self.model.units.keys() - {int(u["jobid"]) for u in result["units"]}
        self.model.apply_list(result)
        self.model.apply_status(status)
        if before:
            # Units ended unseen (events missed): the history has them.
            self.history_soon()
        self._post_changed()

    def history_soon(self) -> None:
        """Fetch the finished units shortly: a burst of units ending is one request."""
        if self._history_due is None:
            self._history_due = time.monotonic() + HISTORY_SETTLE

    async def fetch_history(self) -> None:
        """The recently finished units, in a request of their own, between events."""
        self._history_due = None
        try:
            result = await self.client.call("housekeeping.history", {"limit": HISTORY_SHOWN})
        except ServiceError as exc:
            if exc.code == "EHOSTDOWN":
                raise
            # A service that keeps no history, or will not show it to us: the view
            # says so, the rest of the console works on.
            self.model.history_error = exc.message
            self._post_changed()
            return
        self.model.apply_history(result)
        self._post_changed()
