"""The real Cloud Spanner emulator, started on a free loopback port for a test session or a
benchmark."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.waiting import free_port

DEFAULT_PATH = "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main"


def emulator_binary() -> str | None:
    for candidate in (
        os.environ.get("SPANNER_EMULATOR_BINARY"),
        DEFAULT_PATH,
        shutil.which("emulator_main"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Emulator:
    binary: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--host_port={self.host}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("emulator did not start listening within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @classmethod
    def create(cls, workdir: Path, *, port: int | None = None) -> Emulator:
        binary = emulator_binary()
        if binary is None:
            raise FileNotFoundError(DEFAULT_PATH)
        return cls(binary=binary, port=port or free_port(), log_path=workdir / "emulator.log")
