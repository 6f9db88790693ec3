"""Generate routeplane's gRPC Python code from ``protos/`` (``make protos``).

``python -m control_plane.admin.protos`` writes each of :data:`PROTOS` (the admin API into
``control_plane/admin/pb``, KEDA's external scaler into ``control_plane/keda/pb``), every
``*_pb2.py`` and ``*_pb2_grpc.py`` with its imports rewritten to live in its package. A test
generates into a temporary directory and compares, so a stale copy fails CI.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class Proto:
    """One proto file (under ``protos/``) and the package its code lives in."""

    path: Path
    package: str  # dotted, e.g. control_plane.admin.pb

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def out(self) -> Path:
        return ROOT / Path(*self.package.split("."))


ADMIN = Proto(path=Path("routeplane/admin/v1/admin.proto"), package="control_plane.admin.pb")
KEDA = Proto(path=Path("externalscaler/externalscaler.proto"), package="control_plane.keda.pb")
PROTOS = (ADMIN, KEDA)
PROTO = ADMIN.path  # (the admin API's, as before)


def generate(out: Path, proto: Proto = ADMIN) -> list[Path]:
    """Write ``proto``'s generated code into ``out``; the files written."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{ROOT / 'protos'}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(proto.path),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        written = []
        source = ".".join(proto.path.parent.parts)
        for name in (f"{proto.stem}_pb2.py", f"{proto.stem}_pb2_grpc.py"):
            text = (Path(tmp) / proto.path.parent / name).read_text()
            text = text.replace(
                f"from {source} import {proto.stem}_pb2",
                f"from {proto.package} import {proto.stem}_pb2",
            )
            target = out / name
            target.write_text(text)
            written.append(target)
    (out / "__init__.py").write_text(
        f'"""Generated from protos/{proto.path} by `make protos`."""\n'
    )
    return written


def generate_all() -> list[Path]:
    """Every proto's code into its package."""
    return [path for proto in PROTOS for path in generate(proto.out, proto)]


if __name__ == "__main__":
    written = generate(Path(sys.argv[1])) if len(sys.argv) > 1 else generate_all()
    for path in written:
        print(f"wrote {path}")
