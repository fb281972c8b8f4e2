"""`hkservice --config FILE`: run the housekeeping service in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hkservice import __version__


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["keygen"]:
        from hkservice.keys import keygen_main

        return keygen_main(args_list[1:])
    if args_list[:1] == ["keys"]:
        from hkservice.enrol import keys_main

        return keys_main(args_list[1:])
    if args_list[:1] == ["agent"]:
        from hkservice.nodeagent import main as agent_main

        return agent_main(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="hkservice",
        description="Run the hk housekeeping service in the foreground (logs to stderr).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", "-c", required=True, type=Path, help="TOML config file")
    parser.add_argument(
        "--stop-commands-on-exit",
        action="store_true",
        help="SIGKILL every running housekeeping command when the service stops "
        "(by default they keep running and a restarted service adopts them)",
    )
    parser.add_argument(
        "--recover",
        action="store_true",
        help="the database is missing, empty or corrupt: set it aside and rebuild the "
        "units in progress from the local agent's journal and the output directories "
        "(drains and history cannot be rebuilt)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"hkservice {__version__}")
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s hkservice %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # Imported here so `--help` stays fast and a config error is reported before the
    # heavier modules load.
    from hkservice.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hkservice: ERROR: {exc}", file=sys.stderr)
        return 1
    import sqlite3

    import zmq

    from hkservice.server import run_service

    try:
        return run_service(
            config, stop_commands_on_exit=args.stop_commands_on_exit, recover=args.recover
        )
    except KeyboardInterrupt:
        return 0
    except (OSError, RuntimeError, zmq.ZMQError, sqlite3.Error) as exc:
        print(f"hkservice: ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
