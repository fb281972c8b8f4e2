"""Operating-system limits the service raises for itself at start."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
from pathlib import Path
from typing import Any

import zmq

log = logging.getLogger("hkservice")


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.

    Each client connection holds a descriptor: a burst of job-end hooks under the common
    soft limit of 1,024 would otherwise run the service out of them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    return soft


# Descriptors kept free: the guard closes the door this far from the limit, since libzmq
# may accept some more (its backlog, and whatever arrives before the door is closed).
MARGIN_MIN = 128
# The kernel queues at most this many connections for libzmq to accept after the door
# closes (ZMQ_BACKLOG on the ipc listeners).
BACKLOG = 32


class DescriptorGuard:
    """Keeps libzmq's ipc listeners from running the service out of descriptors.

    libzmq asserts (aborts the process) when accept() on an ipc listener fails with
    EMFILE. So this thread follows every accepted and closed connection (socket monitor
    events), and when the descriptors in use come within a margin of the limit, it moves
    the ipc socket files aside (PATH.full): new clients cannot find the socket, the ones
    connected carry on, and it logs that it refuses connections. Once enough connections
    have closed, the files are put back. A client finding PATH.full says why.
    """

    def __init__(self, ctx: Any, sockets: list[tuple[Any, Path]], limit: int) -> None:
        self.limit = limit
        self.margin = max(MARGIN_MIN, limit // 4)
        self.paths = [path for _, path in sockets]
        self.closed = False
        self._ctx = zmq.Context.shadow(ctx.underlying)
        self._monitors: list[zmq.Socket[Any]] = []
        for i, (sock, _) in enumerate(sockets):
            address = f"inproc://hk-descriptor-guard-{id(self)}-{i}"
            sock.monitor(address, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            monitor = self._ctx.socket(zmq.PAIR)
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(address)
            self._monitors.append(monitor)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="descriptor-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = poller.poll(200)
                for monitor, _ in ready:
                    while True:
                        try:
                            monitor.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if ready or self.closed:
                    self.check()
        except zmq.ZMQError:
            pass  # the context is ending
        finally:
            for monitor in self._monitors:
                monitor.close(linger=0)

    def in_use(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def check(self) -> None:
        used = self.in_use()
        if not self.closed and used >= self.limit - self.margin:
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.rename(path, full_path(path))
            self.closed = True
            log.error(
                "refusing new connections: %d of %d file descriptors in use (raise the hard "
                "RLIMIT_NOFILE, e.g. LimitNOFILE= in the systemd unit); the connected "
                "clients are still served",
                used,
                self.limit,
            )
        elif self.closed and used < self.limit - 2 * self.margin:
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.rename(full_path(path), path)
            self.closed = False
            log.warning(
                "accepting connections again: %d of %d file descriptors in use", used, self.limit
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self.closed:
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.unlink(full_path(path))


def full_path(path: Path | str) -> str:
    """Where a socket file waits while the service is out of descriptors."""
    return f"{path}.full"
