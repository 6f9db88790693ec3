"""The simulated delta-ADS fleet in C (``bench/fleetsim.c``), driven from Python.

``bench/fleet.py``'s grpc.aio simulator spends about as much CPU per push as the server it
measures; on a 2-core machine that leaves the server's second worker no core. The C simulator
(one thread, epoll, HTTP/2 + gRPC + protobuf by hand, one connection per simulated proxy, the
same protocol behaviour as ``bench.fleet._delta_stream``) costs a small fraction of that.

``build()`` compiles it on demand with the machine's C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``) into a cache directory keyed by a hash of the source and the compiler; it returns
None when there is no compiler (callers fall back to the Python simulator and say so).
``FleetSim`` runs one fleet in its own process and talks to it over stdin/stdout lines; every
read has a deadline, and the process is killed if it does not answer, so a bench never hangs.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SOURCE = Path(__file__).with_name("fleetsim.c")
# Time the simulator may take to answer beyond the deadline it was given itself.
GRACE_S = 10.0


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "routeplane-bench"


def build(cache: Path | None = None) -> Path | None:
    """The compiled simulator (built once per source and compiler), or None without a C
    compiler. A compiler that fails raises: the source is broken, not the machine."""
    cc = compiler()
    if cc is None:
        return None
    cache = cache or default_cache()
    key = hashlib.sha256(SOURCE.read_bytes() + cc.encode()).hexdigest()[:16]
    binary = cache / f"fleetsim-{key}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".fleetsim-{key}-{os.getpid()}"
    result = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{cc} could not build {SOURCE}:\n{result.stderr}")
    os.replace(partial, binary)  # atomic: concurrent builds of the same source agree
    return binary


class FleetSimError(RuntimeError):
    """The simulator exited, answered out of turn, or did not answer in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Watched:
    """Every stream's ACK of a new version of one EDS name (or as many as did by the
    deadline)."""

    complete: bool
    count: int
    # Unix time at which the last stream had written its ACK.
    last_ack_at: float
    # The simulator's own CPU seconds (user + system) when it answered.
    cpu_s: float


class FleetSim:
    """One simulated fleet of ``streams`` delta-ADS proxies against ``target`` (host:port).

    ``connect_rate``: new connections per second, first connects and reconnects alike (keep it
    below the server's ``--new-streams-per-second`` to see no refusal; refused streams retry
    with backoff as Envoy does)."""

    def __init__(
        self,
        binary: Path,
        *,
        target: str,
        streams: int,
        clusters: int,
        node_prefix: str = "sim-",
        connect_rate: float = 400.0,
        max_seconds: float = 3600.0,
        log_path: Path | None = None,
    ) -> None:
        argv = [
            str(binary),
            "--target",
            target,
            "--streams",
            str(streams),
            "--clusters",
            str(clusters),
            "--node-prefix",
            node_prefix,
            "--connect-rate",
            str(connect_rate),
            "--max-seconds",
            str(max_seconds),
        ]
        self._log = log_path.open("wb") if log_path else None
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log else subprocess.DEVNULL,
        )
        self._pending = b""
        self._watch_timeout = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError as exc:
            raise FleetSimError(f"the simulator exited ({self.process.poll()})") from exc

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise FleetSimError(f"the simulator did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise FleetSimError(f"the simulator exited ({self.process.wait(5)})")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def _expect(self, word: str, timeout: float) -> list[str]:
        fields = self._line(timeout).split()
        if not fields or fields[0] != word:
            raise FleetSimError(f"expected {word!r} from the simulator, got {' '.join(fields)!r}")
        return fields[1:]

    def wait_complete(self, timeout: float) -> float:
        """Seconds from the simulator's start until every stream was complete (subscribed
        to everything, all of it received and ACKed); raises at the deadline."""
        self._send(f"wait_complete {timeout}")
        fields = self._expect("complete", timeout + GRACE_S)
        if fields[0] != "ok":
            raise FleetSimError(
                f"{fields[1]} streams complete after {timeout:.0f} s; stats: {self.stats()}"
            )
        return float(fields[1])

    def watch(self, name: str, timeout: float) -> None:
        """Start watching EDS resource ``name`` (returns once the simulator is watching: make
        the change after this); ``watched`` reads the outcome."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"watch: name must be one word, got {name!r}")
        self._watch_timeout = timeout
        self._send(f"watch {name} {timeout}")
        self._expect("watching", GRACE_S)

    def watched(self) -> Watched:
        fields = self._expect("watched", self._watch_timeout + GRACE_S)
        return Watched(
            complete=fields[0] == "ok",
            count=int(fields[1]),
            last_ack_at=float(fields[2]),
            cpu_s=float(fields[3]),
        )

    def stats(self) -> dict[str, float]:
        self._send("stats")
        return {
            key: float(value)
            for key, _, value in (field.partition("=") for field in self._expect("stats", GRACE_S))
        }

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._send("quit")
                self.process.wait(timeout=5)
            except (FleetSimError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> FleetSim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
