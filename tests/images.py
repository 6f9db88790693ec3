"""The Dockerfile's install, done outside a container: its own pip commands, in its own order.

The image itself is built and run on a real engine by test_compose_engine.py, which needs
root. This is the quicker check any test can use: ``install_like_the_image`` reads the
Dockerfile and runs what it runs: the build stage's COPY of the project's files and its ``pip
wheel``, then the final stage's ``pip install`` of that wheel (with every dependency it
declares, from the configured package index) into a fresh virtualenv, which stands for the
image's ``/usr/local``. Image paths map onto the test's directories (``/dist`` -> a temporary
folder, the build's WORKDIR -> a copy of the sources); any other command than ``pip`` must be
one that changes no installed file (``rm``, ``useradd``), or this refuses the Dockerfile.

Why a real install with dependencies, and not the wheel alone beside the development venv's
packages: a missing dependency (``cryptography``, once) only shows when nothing else provides
it. pip resolves from the package index that CI also reaches; here and in CI it serves from
the machine's local mirror and takes ~10 s.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HARMLESS = {"rm", "useradd"}  # change no installed file


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages with their instructions (continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            result.append(Stage(base=base.strip(), name=name.strip()))
        else:
            result[-1].instructions.append((keyword, args.strip()))
    return result


@dataclass
class Installed:
    """What the image's install put where: the venv stands for the image's ``/usr/local``."""

    venv: Path
    wheel: Path
    log: str

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    @property
    def site_packages(self) -> Path:
        [path] = (self.venv / "lib").glob("python3*/site-packages")
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process in the image: this venv's commands first, and no
        PYTHONPATH (the tests' own points at the checkout, which must not leak in)."""
        env = _clean_env()
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def image_path(self, path: str) -> Path | None:
        """The local file standing for ``path`` in the image, or None if the image has none."""
        prefixes = {
            "/usr/local/bin/": self.bin,
            "/usr/local/lib/python3.11/site-packages/": self.site_packages,
        }
        for prefix, local in prefixes.items():
            if path.startswith(prefix):
                candidate = local / path[len(prefix) :]
                return candidate if candidate.exists() else None
        return None


def _commands(run: str) -> list[list[str]]:
    return [shlex.split(part) for part in run.split("&&")]


def _map(token: str, paths: dict[str, Path]) -> list[str]:
    for image, local in paths.items():
        if token == image or token.startswith(image + "/"):
            mapped = str(local) + token[len(image) :]
            return sorted(glob.glob(mapped)) or [mapped]
    return [token]


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the tests' own points at the checkout: pip would take an egg-info there
    for an installed routeplane) and no virtualenv of the caller's."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(
    argv: list[str], *, python: str, cwd: Path, paths: dict[str, Path], log: list[str]
) -> None:
    if argv[0] in HARMLESS:
        return
    assert argv[0] == "pip", f"the image runs {argv[0]!r}: not an install this test can follow"
    mapped = [python, "-m", "pip", *(t for token in argv[1:] for t in _map(token, paths))]
    done = subprocess.run(
        mapped,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log.append(f"$ {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, "\n".join(log)


def install_like_the_image(workdir: Path) -> Installed:
    """Build the wheel and install it as the Dockerfile does, into ``workdir / "venv"``."""
    build, final = stages(DOCKERFILE.read_text())
    log: list[str] = []
    dist = workdir / "dist"
    dist.mkdir()
    source = workdir / "src"
    source.mkdir()
    paths = {"/dist": dist}
    cwd = source
    for keyword, args in build.instructions:
        if keyword == "WORKDIR":
            paths[args] = source
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            target = source / dest
            for name in sources:
                origin = ROOT / name
                if origin.is_dir():
                    shutil.copytree(
                        origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif keyword == "RUN":
            for argv in _commands(args):
                _run(argv, python=sys.executable, cwd=cwd, paths=paths, log=log)
    [wheel] = dist.glob("*.whl")

    venv = workdir / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], env=_clean_env(), check=True, timeout=120
    )
    installed = Installed(venv=venv, wheel=wheel, log="")
    for keyword, args in final.instructions:
        if keyword == "COPY":
            assert args.startswith("--from="), f"the image copies {args!r} from the source tree"
        elif keyword == "RUN":
            for argv in _commands(args):
                _run(argv, python=installed.python, cwd=workdir, paths=paths, log=log)
    installed.log = "\n".join(log)
    return installed
