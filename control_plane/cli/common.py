"""What every command family shares: one-line errors, the --registry and --admin options (an
explicit flag or environment variable, else the running mesh's context, ``cli/context.py``), and
opening the registry or calling the admin API.

Part of the CLI: imports the product's public surfaces (``registry``, ``admin.client``) but
nothing from ``control_plane.dev`` at import time; nothing in the product imports it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from control_plane.cli import context
from control_plane.registry import Registry, RegistryError, open_registry

DEFAULT_REGISTRY_ENV = "ROUTEPLANE_REGISTRY"
DEFAULT_ADMIN_ENV = "ROUTEPLANE_ADMIN"
DEFAULT_ADMIN = "127.0.0.1:18001"
EMULATOR_ENV = "SPANNER_EMULATOR_HOST"
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def running_mesh() -> context.MeshContext | None:
    """The context of the mesh this command runs in (see ``cli/context.py``), or None: no file,
    or a file whose mesh is gone (one note on stderr). A file that cannot be used fails."""
    path = context.find_path(cwd=Path.cwd(), environ=os.environ)
    if path is None:
        return None
    try:
        mesh = context.read(path)
    except context.ContextError as exc:
        fail(f"mesh context {exc} (remove it, or set --registry / --admin)")
        return None
    if not context.answers(mesh.admin):
        click.echo(
            f"note: ignoring {path}: no mesh answers at {mesh.admin} (stopped without "
            "`routeplane mesh down`?)",
            err=True,
        )
        return None
    return mesh


def use_emulator(mesh: context.MeshContext) -> None:
    """The mesh's Spanner emulator for this command, unless $SPANNER_EMULATOR_HOST is set."""
    if mesh.emulator_host and not os.environ.get(EMULATOR_ENV):
        os.environ[EMULATOR_ENV] = mesh.emulator_host


def _registry(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value:
        if value.startswith("spanner://") and not os.environ.get(EMULATOR_ENV):
            try:  # the mesh's own registry named by hand: its emulator too
                path = context.find_path(cwd=Path.cwd(), environ=os.environ)
                mesh = context.read(path) if path is not None else None
            except context.ContextError:
                mesh = None
            if mesh is not None and mesh.registry == value:
                use_emulator(mesh)
        return value
    mesh = running_mesh()
    if mesh is None:
        raise click.UsageError(
            f"Missing option '--registry' (or ${DEFAULT_REGISTRY_ENV}); no running mesh found "
            f"(.mesh/{context.CONTEXT_FILE} here or above, or ${context.MESH_ENV})",
            ctx=ctx,
        )
    use_emulator(mesh)
    return mesh.registry


def registry_option(func: F) -> F:
    """--registry: the flag, else $ROUTEPLANE_REGISTRY, else the running mesh's registry."""
    return click.option(
        "--registry",
        envvar=DEFAULT_REGISTRY_ENV,
        default=None,
        callback=_registry,
        help=(
            f"Registry URL (sqlite:///PATH or spanner://...); default ${DEFAULT_REGISTRY_ENV}, "
            "else the running mesh's (.mesh/context.json)."
        ),
    )(func)


def explicit_registry_option(func: F) -> F:
    """--registry for ``serve``: a server never picks a registry from a dev file."""
    return click.option(
        "--registry",
        envvar=DEFAULT_REGISTRY_ENV,
        required=True,
        help=f"Registry URL (sqlite:///PATH or spanner://...); default ${DEFAULT_REGISTRY_ENV}.",
    )(func)


def user_errors(func: F) -> F:
    """Turn registry and validation errors into one-line messages and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RegistryError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(str(exc))
        return None

    return wrapper  # type: ignore[return-value]


def open_reachable(url: str) -> Registry:
    registry = open_registry(url)
    registry.check_reachable()  # fail in a moment with one line, not after long retries
    return registry


def _admin(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value:
        return value
    mesh = running_mesh()
    return mesh.admin if mesh is not None else DEFAULT_ADMIN


def admin_option(func: F) -> F:
    """--admin: the flag, else $ROUTEPLANE_ADMIN, else the running mesh's, else the default."""
    return click.option(
        "--admin",
        envvar=DEFAULT_ADMIN_ENV,
        default=None,
        callback=_admin,
        help=(
            f"Admin address of a running control plane; default ${DEFAULT_ADMIN_ENV}, else the "
            f"running mesh's (.mesh/context.json), else {DEFAULT_ADMIN}."
        ),
    )(func)


def admin_call(admin: str, method: str, request: Any) -> Any:
    from control_plane.admin.client import AdminError, call

    try:
        return call(admin, method, request)
    except AdminError as exc:
        fail(str(exc))
