"""What every command family shares: one-line errors, the --registry and --admin options, and
opening the registry or calling the admin API.

Part of the CLI: imports the product's public surfaces (``registry``, ``admin.client``) but
nothing from ``control_plane.dev`` at import time; nothing in the product imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from control_plane.registry import Registry, RegistryError, open_registry

DEFAULT_REGISTRY_ENV = "ROUTEPLANE_REGISTRY"
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def registry_option(func: F) -> F:
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


def admin_option(func: F) -> F:
    return click.option(
        "--admin",
        default="127.0.0.1:18001",
        show_default=True,
        help="Admin address of a running control plane.",
    )(func)


def admin_call(admin: str, method: str, request: Any) -> Any:
    from control_plane.admin.client import AdminError, call

    try:
        return call(admin, method, request)
    except AdminError as exc:
        fail(str(exc))
