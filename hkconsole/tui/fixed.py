"""The console on fixed sample data, with a fixed clock: snapshots and screenshots."""

from __future__ import annotations

from typing import Any

from hkconsole.tui.app import HkConsole
from hkconsole.tui.detail import Detail
from hkconsole.tui.sample import (
    ENDPOINT,
    LABEL,
    T0,
    sample_data,
    sample_detail,
    sample_history,
)


class FixedConsole(HkConsole):
    """The real console, fed sample data (a moment of the demo) instead of a service."""

    def __init__(self, read_only: bool) -> None:
        super().__init__(
            endpoint=ENDPOINT, read_only=read_only, clock=lambda: T0, live=False, label=LABEL
        )
        self.sample = sample_data()

    def sample_unit(self, jobid: int | None) -> dict[str, Any] | None:
        return next((u for u in self.sample[1]["units"] if u["jobid"] == jobid), None)

    def detail_sample(self, jobid: int) -> Detail | None:
        unit = self.sample_unit(jobid)
        return (*sample_detail(unit), None) if unit is not None else None

    async def fetch_output(self, jobid: int) -> tuple[list[list[Any]], str | None]:
        unit = self.sample_unit(jobid)
        return (sample_detail(unit)[1] if unit is not None else []), None


def fixed_app(read_only: bool = False) -> FixedConsole:
    return FixedConsole(read_only)


def load(
    app: HkConsole,
    config: dict[str, Any],
    units: dict[str, Any],
    status: dict[str, Any],
    history: dict[str, Any] | None = None,
) -> None:
    """Show fixed data without a service (snapshots, screenshots, benchmarks)."""
    app.model.set_config(config)
    app.model.apply_list(units)
    app.model.apply_status(status)
    app.model.apply_history(history or {"units": []})
    app.connected = True
    app.status_line = "connected"
    app.apply_changes(app.model.take_changes(), full=True)
    app.render_header()


def load_sample(app: FixedConsole) -> None:
    config, units, status = app.sample
    load(app, config, units, status, sample_history())


def disconnect(app: HkConsole) -> None:
    app.connected = False
    app.status_line = f"DISCONNECTED: retry 3 in 4s (no hk service at {ENDPOINT})"
    app.render_header()
