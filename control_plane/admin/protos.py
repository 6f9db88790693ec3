"""Generate the admin API's Python code from ``protos/`` (``make protos``).

``python -m control_plane.admin.protos OUT_DIR`` writes ``admin_pb2.py`` and
``admin_pb2_grpc.py`` with imports rewritten to live in ``control_plane.admin.pb``. A test
generates into a temporary directory and compares, so a stale copy fails CI.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("routeplane/admin/v1/admin.proto")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{ROOT / 'protos'}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        written = []
        for name in ("admin_pb2.py", "admin_pb2_grpc.py"):
            text = (Path(tmp) / PROTO.parent / name).read_text()
            text = text.replace(
                "from routeplane.admin.v1 import admin_pb2",
                "from control_plane.admin.pb import admin_pb2",
            )
            target = out / name
            target.write_text(text)
            written.append(target)
    (out / "__init__.py").write_text(
        '"""Generated from protos/routeplane/admin/v1/admin.proto by `make protos`."""\n'
    )
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1] if len(sys.argv) > 1 else "control_plane/admin/pb")):
        print(f"wrote {path}")
