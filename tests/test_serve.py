"""`hkconsole serve`: the console in a real headless Chromium, driven over DevTools.

The page is textual-serve's: an xterm.js terminal drawn on a canvas, fed by a console
process per tab. The test reads what the terminal holds (xterm's own buffer, found
through DevTools' heap query), so it sees what the browser shows, not what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hkconsole.serve import console_command
from hkservice.jobid import encode_jobid
from tests.conftest import RunningService, ServiceFactory, missing_part

HKCONSOLE = (sys.executable, "-m", "hkconsole")
JOBID = 507426897920  # ƒEL6aVGK, the transcript's J1
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
# What xterm.js shows: the terminal object of textual-serve's page is not global, so it
# is found among the page's objects (DevTools' queryObjects) by its public buffer API.
READ_SCREEN = """function () {
    for (const candidate of this) {
        let terminal;
        try {
            terminal = candidate.terminal;
            if (!terminal || !terminal.buffer || !terminal.buffer.active) continue;
        } catch (e) {
            continue;
        }
        const buffer = terminal.buffer.active, rows = [];
        for (let y = 0; y < terminal.rows; y++) {
            const line = buffer.getLine(buffer.viewportY + y);
            rows.push(line ? line.translateToString(true) : "");
        }
        return rows.join("\\n");
    }
    return null;
}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode("utf-8")
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing served at {url} within {timeout} s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """The process and what it started (textual-serve's console processes)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # console processes left behind


@pytest.fixture
def served(hk_service: ServiceFactory, tmp_path: Path) -> Iterator[tuple[RunningService, str, str]]:
    """A service with one unit, and `hkconsole serve` on it: (service, url, the page)."""
    service = hk_service(hostlist="node[0-3]", command=["sleep", "600"])
    service.call("housekeeping.start", {"jobid": JOBID, "ranks": "0-1", "userid": 42})
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the child owns it from here
    proc = subprocess.Popen(
        [*HKCONSOLE, "--endpoint", service.endpoint, "serve", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "HK_F58_FORCE_ASCII": "1"},
    )
    log.close()
    try:
        url = f"http://localhost:{port}/"
        yield service, url, wait_for_http(url, proc)
    finally:
        stop_group(proc)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium with a fresh profile; its DevTools browser endpoint."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        missing_part("no chromium to load the served console in")
    profile = Path(tempfile.mkdtemp(prefix="hk-chromium-"))
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "chromium.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        # Chromium writes its DevTools port, then the browser target's path, here.
        active_port = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_lines(active_port)) < 2:
            assert proc.poll() is None, (tmp_path / "chromium.log").read_text(errors="replace")
            time.sleep(0.1)
        port, path = _lines(active_port)[:2]
        yield f"ws://127.0.0.1:{port}{path}"
    finally:
        stop_group(proc)
        shutil.rmtree(profile, ignore_errors=True)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


class DevToolsError(Exception):
    pass


class DevTools:
    """The few DevTools protocol calls the test needs, on one flat browser connection."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.socket.send_str(json.dumps(message))
        while True:
            reply = json.loads((await self.socket.receive(timeout=30)).data)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply["result"]


async def screen_text(devtools: DevTools, session: str) -> str | None:
    prototype = await devtools.call("Runtime.evaluate", session, expression="Object.prototype")
    objects = await devtools.call(
        "Runtime.queryObjects", session, prototypeObjectId=prototype["result"]["objectId"]
    )
    result = await devtools.call(
        "Runtime.callFunctionOn",
        session,
        objectId=objects["objects"]["objectId"],
        functionDeclaration=READ_SCREEN,
        returnByValue=True,
    )
    await devtools.call("Runtime.releaseObjectGroup", session, objectGroup="")
    value = result["result"].get("value")
    return value if isinstance(value, str) else None


async def load_console(browser: str, url: str, expected: list[str]) -> str:
    """The page's terminal text once it shows every expected string (or the last seen)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(browser, max_msg_size=0) as ws:
        devtools = DevTools(ws)
        target = await devtools.call("Target.createTarget", url=url)
        attached = await devtools.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        text = ""
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            with contextlib.suppress(DevToolsError):  # e.g. the page is still navigating
                text = await screen_text(devtools, session) or ""
            if all(s in text for s in expected):
                break
            await asyncio.sleep(0.5)
        return text


def test_the_console_loads_in_a_real_browser(
    served: tuple[RunningService, str, str], chromium: str
) -> None:
    _, url, page = served
    assert "textual-terminal" in page and "read-only" in page
    jobid = encode_jobid(JOBID, "f58plain")
    text = asyncio.run(load_console(chromium, url, ["JOBID", jobid, "node[0-1]"]))
    assert "JOBID" in text and jobid in text and "node[0-1]" in text, text
    # Read-only unless --operator: `serve` ran the console with --read-only.
    assert "READ-ONLY" in text.splitlines()[0], text


def test_console_command_is_read_only_unless_operator() -> None:
    assert console_command("ipc:///tmp/x y/hk.sock", operator=False).endswith(
        "-m hkconsole --endpoint 'ipc:///tmp/x y/hk.sock' --read-only"
    )
    assert console_command("ipc:///tmp/hk.sock", operator=True).endswith(
        "-m hkconsole --endpoint ipc:///tmp/hk.sock"
    )


def test_a_port_in_use_is_said(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*HKCONSOLE, "--endpoint", f"ipc://{tmp_path}/hk.sock", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert (
        proc.stderr == f"hkconsole: ERROR: cannot serve on localhost:{port}: the port is in use\n"
    )


def test_other_sites_cannot_open_a_console(served: tuple[RunningService, str, str]) -> None:
    """A page elsewhere could open a websocket to localhost; the server refuses its origin."""
    _, url, _ = served

    async def handshake(origin: str) -> int:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.ws_connect(url + "ws", headers={"Origin": origin}):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(handshake("http://evil.example")) == 403
    assert asyncio.run(handshake(url.rstrip("/") + ".evil.example")) == 403
    assert asyncio.run(handshake(url.rstrip("/"))) == 101


def test_read_only_and_operator_together_are_a_usage_error() -> None:
    proc = subprocess.run(
        [*HKCONSOLE, "--read-only", "serve", "--operator"], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "hkconsole: error: serve: --read-only and --operator contradict each other\n"
    )
