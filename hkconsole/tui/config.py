"""Console settings from hk/hkconsole.toml.

```toml
[console]
long-running = "10m"     # units cleaning longer than this stand out
[keys]
"kill.unit" = "K"        # binding id = keys
```
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hkconsole.formatter import FormatError
from hkconsole.tables import load_config
from hkservice.fsd import parse_duration

LONG_RUNNING_DEFAULT = 600.0


class ConsoleSettings(NamedTuple):
    keymap: dict[str, str]
    long_running: float


def load_settings(config: dict[str, Any] | None = None) -> ConsoleSettings:
    """Read the settings; a bad value is an error naming the key, not a silent default."""
    config = load_config() if config is None else config
    keys = config.get("keys", {})
    if not isinstance(keys, dict):
        raise FormatError("[keys] must be a table of binding id = keys")
    console = config.get("console", {})
    long_running = LONG_RUNNING_DEFAULT
    if "long-running" in console:
        try:
            long_running = parse_duration(str(console["long-running"]))
        except ValueError as exc:
            raise FormatError(f"console.long-running: {exc}") from None
    return ConsoleSettings({str(k): str(v) for k, v in keys.items()}, long_running)
