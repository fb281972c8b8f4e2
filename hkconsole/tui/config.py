"""Console settings from hk/hkconsole.toml: remapped keys (`[keys]`, binding id = keys)."""

from __future__ import annotations

from hkconsole.formatter import FormatError
from hkconsole.tables import load_config


def load_keymap() -> dict[str, str]:
    try:
        config = load_config()
    except FormatError:
        return {}
    keys = config.get("keys", {})
    return {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}
