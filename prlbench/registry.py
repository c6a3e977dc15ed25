"""One tiny registry per kind of thing (data sets, models, losses).

Unknown names fail with an error that lists the valid ones, so a typo on the command line tells
the user what they could have typed.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from prlbench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> object map, filled by the `register` decorator."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self._items)}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def resolve(self, names: str) -> list[str]:
        """Parse a comma-separated list ('all' means every name), checking each."""
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        if wanted == ["all"]:
            return self.names()
        for n in wanted:
            self.get(n)
        return wanted

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
