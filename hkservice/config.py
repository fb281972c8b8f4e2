"""The service's TOML configuration (spec §10), checked strictly at start."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hkservice.cluster import Cluster
from hkservice.fsd import parse_duration
from hkservice.protocol import (
    IPC_PATH_MAX,
    default_endpoint,
    endpoint_problem,
    events_endpoint_for,
)

DEFAULT_KILL_GRACE = 90.0
DEFAULT_WARN_AFTER = 600.0
DEFAULT_HISTORY_KEEP = 90 * 86400.0
DEFAULT_FLAPPING_AFTER = 3
DEFAULT_LOST_AFTER = 300.0
DEFAULT_AGENT_SILENCE = 20.0

# table -> key -> (type name shown in errors, required)
SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    # Required unless [scheduler] takes it from the scheduler.
    "cluster": {"hostlist": ("string", False)},
    "housekeeping": {
        "command": ("array of strings", True),
        "release-after": ("duration", False),
        "timeout": ("duration", False),
        "kill-grace": ("duration", False),
        "warn-after": ("duration", False),
    },
    "history": {
        "keep": ("duration", False),
        "flapping-after": ("integer", False),
    },
    "metrics": {"endpoint": ("string", False)},
    # Node agents (hkservice/agents.py); without this table, the local agent.
    "agents": {
        "endpoint": ("string", True),
        "keys": ("string", True),
        "lost-after": ("duration", False),
    },
    "service": {
        "endpoint": ("string", False),
        "events-endpoint": ("string", False),
        "state-dir": ("string", False),
        "read-endpoint": ("string", False),
        "read-events-endpoint": ("string", False),
        "keys-dir": ("string", False),
        "insecure": ("boolean", False),
        "agent-silence": ("duration", False),
    },
    "scheduler": {
        "kind": ("string", True),
        "scontrol": ("string", False),
        "sinfo": ("string", False),
        "command-timeout": ("duration", False),
        "reconcile-every": ("duration", False),
        "orphan-grace": ("duration", False),
    },
}
SCHEDULER_KINDS = ("slurm",)


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class AgentsConfig:
    """[agents]: where node agents connect, whose keys are accepted, and how long a node
    may be without its agent before its ranks are lost (seconds; inf: never)."""

    endpoint: str
    keys: Path
    lost_after: float = DEFAULT_LOST_AFTER


@dataclass(frozen=True)
class SchedulerConfig:
    """[scheduler]: the scheduler bridge (hkservice/slurm); seconds for durations."""

    kind: str
    scontrol: str = "scontrol"
    sinfo: str = "sinfo"
    command_timeout: float = 10.0
    reconcile_every: float = 30.0
    orphan_grace: float = 10.0


@dataclass(frozen=True)
class Config:
    cluster: Cluster
    command: list[str]
    release_after: float | None
    timeout: float | None
    kill_grace: float
    endpoint: str
    events_endpoint: str
    state_dir: Path
    path: Path | None = None
    scheduler: SchedulerConfig | None = None
    # The read-only endpoint and its events (None: none), the directory of CURVE keys
    # (server.key_secret, operators/, schedulers/, viewers/), and whether tcp without
    # CURVE is allowed.
    read_endpoint: str | None = None
    read_events_endpoint: str | None = None
    keys_dir: Path | None = None
    insecure: bool = False

    @property
    def key_dir(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.state_dir / "keys"

    # None: never stuck / kept forever / no metrics endpoint.
    warn_after: float | None = DEFAULT_WARN_AFTER
    history_keep: float | None = DEFAULT_HISTORY_KEEP
    flapping_after: int = DEFAULT_FLAPPING_AFTER
    metrics_endpoint: tuple[str, int] | None = None
    agents: AgentsConfig | None = None
    # How long the local agent may not answer before its nodes show offline.
    agent_silence: float = DEFAULT_AGENT_SILENCE


def state_home() -> Path:
    """$XDG_STATE_HOME, or its default: where a user's daemons keep their state."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def _default_state_dir() -> Path:
    return state_home() / "hk"


def _duration(table: dict[str, Any], key: str, where: str) -> float | None:
    """A duration string, or a bare TOML number of seconds (documented)."""
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f'{where}.{key}: expected a duration string such as "30s"')
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None


def _check_endpoint(endpoint: str, key: str) -> None:
    problem = endpoint_problem(endpoint, bind=True)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")


def _positive_duration(table: dict[str, Any], key: str, where: str, default: float) -> float | None:
    """A duration that must be above 0; "inf" (returned as None) turns the feature off."""
    value = _duration(table, key, where)
    if value is None:
        return default
    if value <= 0:
        raise ConfigError(f'{where}.{key}: must be above 0 (or "inf" for never)')
    return None if math.isinf(value) else value


def parse_metrics_endpoint(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port)."""
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or any(c.isspace() for c in host):
        raise ValueError(f"'{text}' is not HOST:PORT (e.g. \"127.0.0.1:9810\")")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not 0 < int(port_text) < 65536:
        raise ValueError(f"'{text}': the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_config(data: dict[str, Any], path: Path | None = None) -> Config:
    for table_name, table in data.items():
        if table_name not in SCHEMA:
            raise ConfigError(f"unknown table [{table_name}] (known: {', '.join(sorted(SCHEMA))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{table_name}: expected a table")
        for key in table:
            if key not in SCHEMA[table_name]:
                known = ", ".join(SCHEMA[table_name])
                raise ConfigError(f"{table_name}.{key}: unknown key (known: {known})")
    for table_name, keys in SCHEMA.items():
        for key, (_, required) in keys.items():
            if required and table_name in data and key not in data[table_name]:
                raise ConfigError(f"{table_name}.{key}: required key is missing")
    if "housekeeping" not in data:
        raise ConfigError("housekeeping.command: required key is missing")

    scheduler = _scheduler(data["scheduler"]) if "scheduler" in data else None
    hostlist_text = data.get("cluster", {}).get("hostlist")
    if hostlist_text is None:
        if scheduler is None:
            raise ConfigError(
                "cluster.hostlist: required key is missing (or set [scheduler] kind to "
                "take it from the scheduler)"
            )
        hostlist_text = _scheduler_hostlist(scheduler)
    if not isinstance(hostlist_text, str):
        raise ConfigError('cluster.hostlist: expected a string such as "node[0-127]"')
    try:
        cluster = Cluster(hostlist_text)
    except ValueError as exc:
        raise ConfigError(f"cluster.hostlist: {exc}") from None

    hk = data["housekeeping"]
    command = hk["command"]
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, str) and a for a in command)
    ):
        raise ConfigError("housekeeping.command: expected a non-empty array of strings")
    release_after = _duration(hk, "release-after", "housekeeping")
    if release_after is not None and math.isinf(release_after):
        release_after = None
    timeout = _duration(hk, "timeout", "housekeeping")
    if timeout == 0:
        # Flux-style "0 = unlimited" would surprise here as much as "0 = kill at once".
        raise ConfigError(
            "housekeeping.timeout: 0 would time every command out at once; "
            'leave it unset, or "inf", for no timeout'
        )
    if timeout is not None and math.isinf(timeout):
        timeout = None
    kill_grace = _duration(hk, "kill-grace", "housekeeping")
    warn_after = _positive_duration(hk, "warn-after", "housekeeping", DEFAULT_WARN_AFTER)

    history = data.get("history", {})
    history_keep = _positive_duration(history, "keep", "history", DEFAULT_HISTORY_KEEP)
    flapping_after = history.get("flapping-after", DEFAULT_FLAPPING_AFTER)
    if isinstance(flapping_after, bool) or not isinstance(flapping_after, int):
        raise ConfigError("history.flapping-after: expected a whole number such as 3")
    if not 1 <= flapping_after <= 1000:
        raise ConfigError("history.flapping-after: must be from 1 to 1000")

    metrics_text = data.get("metrics", {}).get("endpoint")
    metrics_endpoint = None
    if metrics_text is not None:
        if not isinstance(metrics_text, str):
            raise ConfigError('metrics.endpoint: expected a string such as "127.0.0.1:9810"')
        try:
            metrics_endpoint = parse_metrics_endpoint(metrics_text)
        except ValueError as exc:
            raise ConfigError(f"metrics.endpoint: {exc}") from None

    service = data.get("service", {})
    for key in (
        "endpoint",
        "events-endpoint",
        "state-dir",
        "read-endpoint",
        "read-events-endpoint",
        "keys-dir",
    ):
        if key in service and not isinstance(service[key], str):
            raise ConfigError(f"service.{key}: expected a string")
    if "insecure" in service and not isinstance(service["insecure"], bool):
        raise ConfigError("service.insecure: expected true or false")
    agent_silence = _positive_duration(service, "agent-silence", "service", DEFAULT_AGENT_SILENCE)
    endpoint = service.get("endpoint") or default_endpoint()
    _check_endpoint(endpoint, "service.endpoint")
    try:
        events_endpoint = service.get("events-endpoint") or events_endpoint_for(endpoint)
    except ValueError as exc:
        raise ConfigError(f"service.endpoint: {exc}") from None
    _check_endpoint(events_endpoint, "service.events-endpoint")
    if events_endpoint == endpoint:
        raise ConfigError(
            f"service.events-endpoint: '{events_endpoint}' is also the request endpoint"
        )
    read_endpoint, read_events_endpoint = _read_endpoints(service, (endpoint, events_endpoint))
    state_dir = Path(service["state-dir"]) if "state-dir" in service else _default_state_dir()
    # The local agent's socket lives in the state directory: a long state-dir would
    # only fail when the first command is launched.
    agent_socket = os.fsencode(state_dir / "run" / "agent.sock")
    if len(agent_socket) > IPC_PATH_MAX:
        raise ConfigError(
            f"service.state-dir: '{state_dir}' is too long: the local agent's socket "
            f"{os.fsdecode(agent_socket)} would be {len(agent_socket)} bytes, over the "
            f"{IPC_PATH_MAX}-byte limit of ipc socket paths"
        )
    return Config(
        cluster=cluster,
        command=list(command),
        release_after=release_after,
        timeout=timeout,
        kill_grace=DEFAULT_KILL_GRACE if kill_grace is None else kill_grace,
        endpoint=endpoint,
        events_endpoint=events_endpoint,
        state_dir=state_dir,
        path=path,
        scheduler=scheduler,
        read_endpoint=read_endpoint,
        read_events_endpoint=read_events_endpoint,
        keys_dir=Path(service["keys-dir"]) if "keys-dir" in service else None,
        insecure=service.get("insecure", False),
        agent_silence=math.inf if agent_silence is None else agent_silence,
        warn_after=warn_after,
        history_keep=history_keep,
        flapping_after=flapping_after,
        metrics_endpoint=metrics_endpoint,
        agents=_agents(data["agents"], path) if "agents" in data else None,
    )


def _agents(table: dict[str, Any], path: Path | None) -> AgentsConfig:
    endpoint, keys_dir = table["endpoint"], table["keys"]
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        raise ConfigError('agents.endpoint: expected a tcp endpoint such as "tcp://*:7101"')
    _check_endpoint(endpoint, "agents.endpoint")
    if not isinstance(keys_dir, str) or not keys_dir:
        raise ConfigError("agents.keys: expected the directory of the agents' public keys")
    lost_after = _positive_duration(table, "lost-after", "agents", DEFAULT_LOST_AFTER)
    return AgentsConfig(endpoint, Path(keys_dir), math.inf if lost_after is None else lost_after)


def _scheduler(table: dict[str, Any]) -> SchedulerConfig:
    kind = table["kind"]
    if kind not in SCHEDULER_KINDS:
        raise ConfigError(f"scheduler.kind: expected one of {', '.join(SCHEDULER_KINDS)}")
    commands: dict[str, str] = {}
    for key in ("scontrol", "sinfo"):
        if key in table:
            value = table[key]
            if not isinstance(value, str) or not value:
                raise ConfigError(f"scheduler.{key}: expected a command name or path")
            commands[key] = value
    times: dict[str, float] = {}
    for key in ("command-timeout", "reconcile-every", "orphan-grace"):
        value = _duration(table, key, "scheduler")
        if value is None:
            continue
        if value <= 0 or math.isinf(value):
            raise ConfigError(f"scheduler.{key}: expected a duration over 0 and finite")
        times[key.replace("-", "_")] = value
    return SchedulerConfig(kind, **commands, **times)


def _scheduler_hostlist(scheduler: SchedulerConfig) -> str:
    """cluster.hostlist from Slurm: every node `sinfo` lists (ranks in name order)."""
    import hostlist

    from hkservice.slurm.nodes import Commands, SlurmError, hostnames

    commands = Commands(scheduler.scontrol, scheduler.sinfo, scheduler.command_timeout)
    try:
        names = hostnames(commands)
    except SlurmError as exc:
        raise ConfigError(f"cluster.hostlist: cannot take it from Slurm: {exc}") from None
    if not names:
        raise ConfigError("cluster.hostlist: Slurm (sinfo) lists no nodes")
    return str(hostlist.collect_hostlist(names))


def _read_endpoints(
    service: dict[str, Any], taken: tuple[str, str]
) -> tuple[str | None, str | None]:
    """The read-only endpoint and its events endpoint, or (None, None)."""
    read_endpoint = service.get("read-endpoint") or None
    if read_endpoint is None:
        if service.get("read-events-endpoint"):
            raise ConfigError("service.read-events-endpoint: set without a read-endpoint")
        return None, None
    _check_endpoint(read_endpoint, "service.read-endpoint")
    try:
        read_events = service.get("read-events-endpoint") or events_endpoint_for(read_endpoint)
    except ValueError as exc:
        raise ConfigError(f"service.read-endpoint: {exc}") from None
    _check_endpoint(read_events, "service.read-events-endpoint")
    if read_events == read_endpoint or read_endpoint in taken:
        raise ConfigError(f"service.read-endpoint: '{read_endpoint}' is used twice")
    if read_events in taken:
        raise ConfigError(f"service.read-events-endpoint: '{read_events}' is used twice")
    return read_endpoint, read_events


def load_config(path: Path) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path)
