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


def split_specs(text: str, flag: str, example: str) -> list[str]:
    """A comma-separated list of names that may carry settings in brackets
    ("bce,pwiser[norm=paper,lam=1]"): commas inside brackets do not split; items stripped,
    empty ones dropped. Unbalanced or nested brackets raise ConfigError naming `flag`."""
    from prlbench.errors import ConfigError

    parts, depth, current = [], 0, ""
    for ch in str(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            break
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise ConfigError(f"{flag}: unbalanced brackets in {str(text)[:200]!r}; write {example}")
    return [p.strip() for p in parts + [current] if p.strip()]
