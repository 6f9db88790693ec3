"""Registry errors, one tree::

RegistryError
├── ValidationError          bad input; names the field and the value
├── NotFoundError            unknown server or replica
├── ConflictError            the write contradicts a row already there
├── RegistryUnavailableError the store cannot be reached or opened
└── ServersFileError         a servers file cannot be read, checked or applied; names the
                             file (and the server)
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every registry error; ``str()`` is a one-line message for users."""


class ValidationError(RegistryError):
    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {value!r}: {reason}")


class NotFoundError(RegistryError):
    pass


class ConflictError(RegistryError):
    pass


class RegistryUnavailableError(RegistryError):
    pass


class ServersFileError(RegistryError):
    pass
