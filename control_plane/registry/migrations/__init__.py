"""Versioned schema migrations, one SQL file each: ``<store>/<NNNN>_<description>.sql``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def load(store: str) -> list[Migration]:
    """Every migration of ``store`` ("sqlite" or "spanner") in version order."""
    out = []
    for path in sorted((HERE / store).glob("*.sql")):
        number, _, slug = path.stem.partition("_")
        text = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        statements = tuple(s.strip() for s in text.split(";") if s.strip())
        out.append(Migration(int(number), slug.replace("_", " "), statements))
    return out
