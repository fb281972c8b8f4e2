"""Enrolment of node agents' keys, as Salt's `salt-key` does it: `hkservice keys`.

An agent whose key the service does not know gets through the CURVE handshake only as
*pending*: it may say `ready` (naming its key and the hosts it claims), nothing else. The
service keeps its public key in `state-dir/agents/pending/` with what it claimed, from
where and when, logs it once, and tells the agent it is pending. An operator then runs

    hkservice keys [--config FILE] list
    hkservice keys accept NAME      # a pending key (by its name or a host it claims)
    hkservice keys reject NAME      # a pending key: refused from then on
    hkservice keys revoke NAME      # an accepted key: refused, its agent disconnected

`accept` writes the key into `[agents] keys` with the hosts it claimed (or `--hosts`); the
agent, which asks again every few seconds, gets in by itself. Rejected and revoked keys
go to `state-dir/agents/rejected/` and are refused at the handshake. Copying public keys
into `[agents] keys` by hand keeps working: enrolment is only the way in for the others.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hkservice import keys
from hkservice.cluster import Cluster

# Pending keys kept at most: beyond, unknown keys are refused outright (each knock of an
# unknown key would otherwise cost a file).
MAX_PENDING = 256


@dataclass(frozen=True)
class KeyDirs:
    accepted: Path  # [agents] keys
    pending: Path
    rejected: Path

    @classmethod
    def of(cls, keys_dir: Path, state_dir: Path) -> KeyDirs:
        return cls(keys_dir, state_dir / "agents" / "pending", state_dir / "agents" / "rejected")


def _file_name(name: str, public: bytes) -> str:
    """A pending or rejected key's file: its claimed name if usable, and a digest of the
    key, so two agents claiming one name never overwrite each other."""
    digest = hashlib.sha256(public).hexdigest()[:10]
    shown = name if keys.NAME_PATTERN.fullmatch(name) and len(name) <= 48 else "unnamed"
    return f"{shown}-{digest}{keys.PUBLIC_SUFFIX}"


def _write_public(path: Path, public: bytes, metadata: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys.write_public(path, public, metadata)


def record_pending(
    dirs: KeyDirs, public: bytes, name: str, hosts: str, peer: str, now: float
) -> Path | None:
    """Keep an unknown agent's key as pending; the file, or None if it was already
    pending (or there are MAX_PENDING already)."""
    if pending_count(dirs) >= MAX_PENDING:
        return None
    path = dirs.pending / _file_name(name, public)
    if path.exists():
        return None
    metadata = {
        "name": name if keys.NAME_PATTERN.fullmatch(name) else "",
        "hosts": hosts,
        "peer": peer,
        "knocked": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
    }
    try:
        _write_public(path, public, metadata)
    except (OSError, keys.KeyFileError):
        return None
    return path


def pending_count(dirs: KeyDirs) -> int:
    try:
        return sum(1 for e in os.scandir(dirs.pending) if e.name.endswith(keys.PUBLIC_SUFFIX))
    except OSError:
        return 0


class EnrolError(Exception):
    """An `hkservice keys` command that cannot be done; the message says why."""


def _matching(found: dict[bytes, keys.Certificate], what: str, where: Path) -> keys.Certificate:
    """The one key named `what`, or claiming host `what`."""
    named = [c for c in found.values() if c.name == what]
    if not named:
        named = [c for c in found.values() if what in _hosts_of(c)]
    if not named:
        raise EnrolError(f"no key named {what!r} or for host {what!r} in {where}")
    if len(named) > 1:
        files = ", ".join(c.path.name for c in named)
        raise EnrolError(f"{what!r} matches {len(named)} keys in {where} ({files}): give a file")
    return named[0]


def _hosts_of(cert: keys.Certificate) -> list[str]:
    text = cert.metadata.get("hosts", "")
    try:
        cluster = Cluster(text) if text else None
    except ValueError:
        return []
    return [cluster.hostname(i) for i in range(cluster.size)] if cluster else []


def _select(directory: Path, what: str) -> keys.Certificate:
    found = keys.load_public_keys(directory)
    if what.endswith(keys.PUBLIC_SUFFIX):  # a file name, as `list` shows it
        for cert in found.values():
            if cert.path.name == what:
                return cert
    return _matching(found, what, directory)


def accept(dirs: KeyDirs, what: str, hosts: str | None = None) -> Path:
    cert = _select(dirs.pending, what)
    hosts = hosts or cert.metadata.get("hosts", "")
    if not hosts:
        raise EnrolError(f"{cert.path} claims no hosts: give them with --hosts")
    try:
        Cluster(hosts)
    except ValueError as exc:
        raise EnrolError(f"hosts {hosts!r}: {exc}") from None
    name = cert.metadata.get("name") or cert.path.name[: -len(keys.PUBLIC_SUFFIX)]
    target = dirs.accepted / f"{name}{keys.PUBLIC_SUFFIX}"
    for other in keys.load_public_keys(dirs.accepted).values():
        if other.name == name:
            raise EnrolError(
                f"a key named {name!r} is accepted already ({other.path}): revoke it first"
            )
    dirs.accepted.mkdir(parents=True, exist_ok=True)
    try:
        keys.write_public(target, cert.public, {"name": name, "hosts": hosts})
    except keys.KeyFileError as exc:
        raise EnrolError(str(exc)) from None
    cert.path.unlink()
    return target


def reject(dirs: KeyDirs, what: str) -> Path:
    cert = _select(dirs.pending, what)
    return _move_to_rejected(dirs, cert)


def revoke(dirs: KeyDirs, what: str) -> Path:
    cert = _select(dirs.accepted, what)
    return _move_to_rejected(dirs, cert)


def _move_to_rejected(dirs: KeyDirs, cert: keys.Certificate) -> Path:
    target = dirs.rejected / _file_name(cert.name, cert.public)
    metadata = {k: v for k, v in cert.metadata.items() if k in ("name", "hosts", "peer")}
    metadata["rejected"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not target.exists():
        try:
            _write_public(target, cert.public, metadata)
        except keys.KeyFileError as exc:
            raise EnrolError(str(exc)) from None
    cert.path.unlink()
    return target


def listing(dirs: KeyDirs) -> list[tuple[str, keys.Certificate]]:
    """(state, key) for every key: accepted, pending, rejected."""
    rows: list[tuple[str, keys.Certificate]] = []
    for state, directory in (
        ("accepted", dirs.accepted),
        ("pending", dirs.pending),
        ("rejected", dirs.rejected),
    ):
        for cert in sorted(keys.load_public_keys(directory).values(), key=lambda c: c.name):
            rows.append((state, cert))
    return rows


def keys_main(argv: list[str]) -> int:
    from hkservice.config import ConfigError, load_config
    from hkservice.text import visible

    parser = argparse.ArgumentParser(
        prog="hkservice keys",
        description="Node agents' keys: list them, accept or reject a pending one, "
        "revoke an accepted one.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", "-c", type=Path, default=Path("/etc/hk/hk.toml"), help="the service's config"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="accepted, pending and rejected keys")
    p = sub.add_parser("accept", help="trust a pending key (its name, a host, or its file)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--hosts", metavar="HOSTLIST", help="the hosts it serves (default: claimed)")
    p = sub.add_parser("reject", help="refuse a pending key from now on")
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("revoke", help="refuse an accepted key; its agent is disconnected")
    p.add_argument("name", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hkservice: ERROR: {exc}", file=sys.stderr)
        return 1
    if config.agents is None:
        print(f"hkservice: ERROR: {args.config} has no [agents] section", file=sys.stderr)
        return 1
    dirs = KeyDirs.of(config.agents.keys, config.state_dir)
    try:
        if args.command == "list":
            print(f"{'STATE':<9} {'NAME':<20} {'HOSTS':<24} DETAIL")
            for state, cert in listing(dirs):
                meta = cert.metadata
                detail = (
                    f"from {meta.get('peer', '?')} at {meta.get('knocked', '?')}"
                    if state == "pending"
                    else f"since {meta['rejected']}"
                    if "rejected" in meta
                    else ""
                )
                print(
                    visible(
                        f"{state:<9} {cert.name:<20} {meta.get('hosts', ''):<24} {detail}"
                    ).rstrip()
                )
        elif args.command == "accept":
            path = accept(dirs, args.name, args.hosts)
            print(f"accepted {path}: its agent gets in at its next try")
        elif args.command == "reject":
            print(f"rejected: {reject(dirs, args.name)}")
        else:
            print(f"revoked: {revoke(dirs, args.name)}; its agent is disconnected")
    except (EnrolError, OSError) as exc:
        print(f"hkservice: ERROR: {exc}", file=sys.stderr)
        return 1
    return 0
