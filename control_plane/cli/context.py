"""The mesh context: where a running local mesh's registry, emulator and admin address are
written (``mesh up``), and how the CLI finds them, so registry and admin commands work with
no ``--registry`` / ``--admin`` (like a kubectl or docker context).

The file is ``.mesh/context.json`` (``CONTEXT_FILE`` under the mesh's workdir), found from the
current directory upward, or named by ``$ROUTEPLANE_MESH`` (the file, or the workdir holding
it). An explicit flag or environment variable always wins over it. Everything read from it is
bounded and validated: a corrupt or hostile file is a :class:`ContextError` naming the file and
the field, never a traceback. A file whose mesh is gone (nothing answers at its admin address)
is ignored.

Part of the CLI: imports nothing of routeplane; ``dev/mesh.py`` imports it to write the file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

CONTEXT_FILE = "context.json"
MESH_DIR = ".mesh"
MESH_ENV = "ROUTEPLANE_MESH"
MAX_BYTES = 16 * 1024
MAX_FIELD = 1024
MAX_PARENTS = 64  # directories walked upward from the current one
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]{1,253}:([0-9]{1,5})$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]*$")  # no spaces, no control characters


class ContextError(Exception):
    """The mesh context file cannot be used; the message names the file and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshContext:
    path: Path
    registry: str  # sqlite:///PATH or spanner://...
    emulator_host: str  # HOST:PORT of the Spanner emulator, "" for none
    admin: str  # HOST:PORT of the control plane's admin API

    def to_json(self) -> str:
        return json.dumps(
            {"registry": self.registry, "emulator_host": self.emulator_host, "admin": self.admin},
            indent=2,
        )


def _address(path: Path, field: str, value: str) -> str:
    match = _ADDRESS.match(value)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ContextError(f"{path}: {field} {value[:80]!r} is not HOST:PORT")
    return value


def parse(path: Path, data: bytes) -> MeshContext:
    """The context in ``data`` (the bytes of ``path``), or ContextError naming what is wrong."""
    if len(data) > MAX_BYTES:
        raise ContextError(f"{path}: {len(data)} bytes, more than {MAX_BYTES}")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContextError(f"{path}: not JSON ({str(exc)[:120]})") from None
    if not isinstance(raw, dict):
        raise ContextError(f"{path}: not a JSON object")
    fields: dict[str, str] = {}
    for field, required in (("registry", True), ("emulator_host", False), ("admin", True)):
        value = raw.get(field, None if required else "")
        if not isinstance(value, str) or (required and not value):
            raise ContextError(f"{path}: {field} is missing or not a string")
        if len(value) > MAX_FIELD or not _PRINTABLE.match(value):
            raise ContextError(
                f"{path}: {field} is longer than {MAX_FIELD} or has spaces or control characters"
            )
        fields[field] = value
    if not fields["registry"].startswith(("sqlite://", "spanner://")):
        raise ContextError(
            f"{path}: registry {fields['registry'][:80]!r} is not sqlite:// or spanner://"
        )
    if fields["emulator_host"]:
        _address(path, "emulator_host", fields["emulator_host"])
    _address(path, "admin", fields["admin"])
    return MeshContext(
        path=path,
        registry=fields["registry"],
        emulator_host=fields["emulator_host"],
        admin=fields["admin"],
    )


def find_path(*, cwd: Path, environ: dict[str, str] | os._Environ[str]) -> Path | None:
    """Where the context is: ``$ROUTEPLANE_MESH`` (a file, or a directory holding
    ``context.json``), else the first ``.mesh/context.json`` from ``cwd`` upward."""
    named = environ.get(MESH_ENV, "")
    if named:
        path = Path(named)
        return path / CONTEXT_FILE if path.is_dir() else path
    for directory in [cwd, *cwd.parents][:MAX_PARENTS]:
        candidate = directory / MESH_DIR / CONTEXT_FILE
        if candidate.is_file():
            return candidate
    return None


def read(path: Path) -> MeshContext:
    """The context in ``path``, read bounded; ContextError when it cannot be used."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ContextError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse(path, data)


def answers(address: str, *, timeout: float = 0.5) -> bool:
    """Whether something accepts a TCP connection at ``address`` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def write(workdir: Path, *, registry: str, emulator_host: str, admin: str) -> Path:
    """Write the context of a mesh whose state lives in ``workdir`` (``mesh up``)."""
    path = workdir / CONTEXT_FILE
    context = parse(
        path,
        json.dumps({"registry": registry, "emulator_host": emulator_host, "admin": admin}).encode(),
    )  # what is written is what is read back
    tmp = path.with_suffix(".tmp")
    tmp.write_text(context.to_json() + "\n")
    tmp.replace(path)
    return path


def remove(workdir: Path) -> None:
    (workdir / CONTEXT_FILE).unlink(missing_ok=True)
