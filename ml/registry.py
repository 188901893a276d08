"""Name → factory registries (architectures, front ends, augmentations).

An unknown name fails with the list of valid ones, so a typo in `config.yml` is a one-line fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError's repr-quoting makes messages hard to read
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A typed mapping from names to entries, filled by a ``@registry.register("name")`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; registering a name twice is a programming error."""

        def deco(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return deco

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`UnknownNameError` listing the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {sorted(self._entries)}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
