"""Log lines from several processes sharing one file stay whole: a worker group (and the mesh,
unbuffered) writes JSON lines to one stderr, and a line written as two writes (the event, then
its newline) could land glued to another process's line (``}{``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from control_plane import logs
import structlog
logs.configure(json=True)
log = structlog.get_logger()
for i in range(int(sys.argv[1])):
    log.info("line_written", writer=sys.argv[2], i=i)
"""


def test_unbuffered_processes_sharing_one_log_file_write_whole_lines(tmp_path: Path) -> None:
    lines = 3000
    path = tmp_path / "shared.log"
    with path.open("ab") as shared:
        writers = [
            subprocess.Popen(
                [sys.executable, "-u", "-c", WRITER, str(lines), name],
                stderr=shared,
                cwd=Path(__file__).resolve().parents[2],
            )
            for name in ("a", "b", "c")
        ]
        for writer in writers:
            assert writer.wait(timeout=120) == 0
    events = [json.loads(line) for line in path.read_text().splitlines()]  # each line whole
    assert len(events) == 3 * lines
    for name in ("a", "b", "c"):
        assert [e["i"] for e in events if e["writer"] == name] == list(range(lines))
