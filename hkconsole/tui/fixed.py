"""The console on fixed sample data, with a fixed clock: snapshots and screenshots."""

from __future__ import annotations

from hkconsole.tui.app import HkConsole
from hkconsole.tui.sample import T0, sample_data, sample_detail


def fixed_app(nodes: int = 64, units: int = 9, read_only: bool = False) -> HkConsole:
    app = HkConsole(
        endpoint="ipc:///run/hk/hk.sock", read_only=read_only, clock=lambda: T0, live=False
    )
    app.sample = sample_data(nodes, units)  # type: ignore[attr-defined]
    return app


def load_sample(app: HkConsole, detail: bool = True) -> None:
    config, units, status = app.sample  # type: ignore[attr-defined]
    app.load(config, units, status)
    if detail and units["units"]:
        first = units["units"][0]
        app.selected = first["jobid"]
        app.show_detail(*sample_detail(first))


def disconnect(app: HkConsole) -> None:
    app.connected = False
    app.status_line = "DISCONNECTED: retry 3 in 4s (no hk service at ipc:///run/hk/hk.sock)"
    app.render_header()
