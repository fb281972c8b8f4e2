"""`hkconsole serve`: the live console in a web browser, through textual-serve.

Each browser tab gets its own console process (`python -m hkconsole --endpoint EP ...`),
run by textual-serve with Textual's web driver; this module only builds that command and
starts the web server. The console is read-only unless `--operator` is given: anyone who
can open the page acts with the rights of the user running `serve`.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys

# Loopback only: the page has no login of its own. Reach it from elsewhere through an
# ssh tunnel (`ssh -L 8000:localhost:8000 HOST`), which brings its own authentication.
HOST = "localhost"
DEFAULT_PORT = 8000
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"


def console_command(endpoint: str, operator: bool) -> str:
    """The shell command textual-serve runs for each browser session."""
    argv = [sys.executable, "-m", "hkconsole", "--endpoint", endpoint]
    if not operator:
        argv.append("--read-only")
    return shlex.join(argv)


def under_web_driver() -> bool:
    """Run by textual-serve: the console draws into a browser, not a terminal."""
    return os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER


def page_origins(port: int) -> frozenset[str]:
    """The origins of the served page: the only ones whose scripts may open a console."""
    return frozenset(f"http://{host}:{port}" for host in (HOST, "127.0.0.1", "[::1]"))


def run_serve(endpoint: str, port: int, operator: bool) -> int:
    from aiohttp import web
    from textual_serve.server import Server

    origins = page_origins(port)

    class ConsoleServer(Server):
        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            # Browsers let any web page open a websocket to localhost: without this check,
            # a page the operator visits elsewhere could type into a console (and, with
            # --operator, kill). Browsers always send Origin; a local program need not.
            origin = request.headers.get("Origin")
            if origin is not None and origin not in origins:
                raise web.HTTPForbidden(text=f"hkconsole serve: origin {origin} refused\n")
            return await super().handle_websocket(request)

    mode = "operator: kill and drain enabled" if operator else "read-only"
    server = ConsoleServer(
        console_command(endpoint, operator),
        host=HOST,
        port=port,
        title=f"hk console ({mode}) on {endpoint}",
    )
    try:
        server.serve()
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise OSError(exc.errno, f"cannot serve on {HOST}:{port}: {why}") from None
    return 0
