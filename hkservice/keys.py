"""CURVE key pairs: `hkservice keygen NAME [--hosts HOSTLIST]`, and reading them back.

One format for every key hk uses (the service's own, operators', viewers', schedulers',
and the node agents'): ZeroMQ's certificate text (`NAME.key` public, `NAME.key_secret`
secret), which `zmq.auth.load_certificate` and Flux's `curve.cert` readers also accept.
The metadata names who the key is for; an agent's key names the hosts it may serve, so a
stolen node key cannot act as another node.

The secret file is created mode 0600 from the start (never chmod-ed afterwards: under
umask 022 there would be a moment when anyone could read it), and no file is overwritten.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# A key's name becomes a file name and shows in the audit log: keep it plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
# Refuse files far bigger than any certificate before reading them whole.
MAX_CERT_BYTES = 64 * 1024


class KeyFileError(Exception):
    """A key file that cannot be written or read; the message names the file."""


@dataclass(frozen=True)
class Certificate:
    path: Path
    public: bytes  # z85, 40 bytes
    secret: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The key's name: its metadata `name`, else its file name without suffix."""
        name = self.metadata.get("name")
        if name:
            return name
        file = self.path.name
        for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
            if file.endswith(suffix):
                return file[: -len(suffix)]
        return file


def _banner(kind: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return f"#   ZeroMQ CURVE {kind} certificate, made by hkservice keygen on {stamp}\n"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cert_text(kind: str, public: str, secret: str | None, metadata: dict[str, str]) -> str:
    lines = [_banner(kind).rstrip("\n"), "", "metadata"]
    lines += [f"    {key} = {_quoted(value)}" for key, value in metadata.items()]
    lines += ["curve", f'    public-key = "{public}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists: not overwritten (remove it first)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)  # the umask may have taken bits the public file needs


def write_public(path: Path, public: bytes, metadata: dict[str, str]) -> None:
    """A public certificate (0644) for a key known only by its public half (enrolment);
    never over an existing file. Metadata values must be one line each."""
    if any("\n" in v or "\r" in v for v in metadata.values()):
        raise KeyFileError(f"{path}: metadata must be one line per value")
    _write_new(path, _cert_text("public", public.decode(), None, metadata), 0o644)


def keygen(directory: Path, name: str, hosts: str | None = None) -> tuple[Path, Path]:
    """Write NAME.key (0644) and NAME.key_secret (0600) in `directory`; returns both paths."""
    import zmq

    if not NAME_PATTERN.fullmatch(name):
        raise KeyFileError(
            f"{name!r} is not a key name: letters, digits, '.', '_' and '-', at most 64, "
            "starting with a letter or digit"
        )
    metadata = {"name": name}
    if hosts is not None:
        from hkservice.cluster import Cluster

        try:
            Cluster(hosts)
        except ValueError as exc:
            raise KeyFileError(f"--hosts: {exc}") from None
        metadata["hosts"] = hosts
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    _write_new(secret_path, _cert_text("secret", public.decode(), secret.decode(), metadata), 0o600)
    try:
        _write_new(public_path, _cert_text("public", public.decode(), None, metadata), 0o644)
    except KeyFileError:
        secret_path.unlink()
        raise
    return public_path, secret_path


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def load(path: Path, *, need_secret: bool = False) -> Certificate:
    """Read a certificate (ours, pyzmq's or Flux's); a clear KeyFileError if it is not one."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CERT_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_CERT_BYTES:
        raise KeyFileError(f"{path} is not a key file: over {MAX_CERT_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a key file: not UTF-8 text") from None
    section = ""
    metadata: dict[str, str] = {}
    curve: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        # Only whole-line comments: '#' is one of the Z85 digits.
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
            continue
        key, eq, value = line.strip().partition("=")
        if not eq:
            continue
        target = metadata if section == "metadata" else curve if section == "curve" else None
        if target is not None:
            target[key.strip()] = _unquote(value)
    public = curve.get("public-key", "")
    if not Z85_KEY.fullmatch(public):
        raise KeyFileError(f"{path} is not a key file: no valid public-key in its curve section")
    secret = curve.get("secret-key")
    if secret is not None and not Z85_KEY.fullmatch(secret):
        raise KeyFileError(f"{path}: its secret-key is not a 40-character Z85 key")
    if need_secret and secret is None:
        raise KeyFileError(f"{path} holds no secret key: give the {SECRET_SUFFIX} file")
    return Certificate(
        path, public.encode(), secret.encode() if secret is not None else None, metadata
    )


def load_public_keys(directory: Path) -> dict[bytes, Certificate]:
    """Every *.key in `directory` by public key; unreadable files are skipped (returned
    apart would be nicer, but a bad file must not lock every other key out)."""
    found: dict[bytes, Certificate] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.endswith(PUBLIC_SUFFIX):
            continue
        try:
            cert = load(entry)
        except KeyFileError:
            continue
        found.setdefault(cert.public, cert)
    return found


def keygen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hkservice keygen",
        description="Write a CURVE key pair: NAME.key (public, mode 0644) and NAME.key_secret "
        "(secret, mode 0600). Give the public file to the service's key directory "
        "(operators/, viewers/, schedulers/ or agents/); keep the secret with its owner.",
        allow_abbrev=False,
    )
    parser.add_argument("name", metavar="NAME", help="the key's name, shown in the audit log")
    parser.add_argument(
        "--hosts", metavar="HOSTLIST", help="the hosts this key may serve (node agents' keys)"
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="where to write (default: here)"
    )
    args = parser.parse_args(argv)
    try:
        public, secret = keygen(args.dir, args.name, args.hosts)
    except KeyFileError as exc:
        print(f"hkservice: ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {public} (public) and {secret} (secret, mode 0600)")
    return 0
