"""The one grammar of names with settings: `name[key=value,...]`, for data-set variants
(`synthetic[noise=0.5]`) and loss specs (`pwiser[norm=paper,lam=1]`), and of comma lists of
them (`bce,pwiser[norm=paper,lam=1]`): splitting a list, parsing a spec, writing it back in one
canonical form, and writing a number shortest.

The callers (data.variants, experiment.grid) check the keys and values against what their name
takes; the messages here say what is wrong with the form, and the caller names the flag.
"""

from __future__ import annotations

from prlbench.errors import ConfigError


class SpecError(ConfigError):
    """A spec that is not of the form name[key=value,...]: `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_list(text: str, flag: str, example: str) -> list[str]:
    """A comma-separated list of names that may carry settings in brackets
    ("bce,pwiser[norm=paper,lam=1]"): commas inside brackets do not split; items stripped,
    empty ones dropped. Unbalanced or nested brackets raise ConfigError naming `flag`."""
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


def parse(spec: str) -> tuple[str, list[tuple[str, str]] | None]:
    """"name[k=v,k2=v2]" -> ("name", [("k", "v"), ("k2", "v2")]); "name" -> ("name", None).
    Keys and values are stripped text; a SpecError says what is wrong with the form: brackets
    misplaced or empty, an item that is not key=value, a key given twice."""
    name, bracket, inner = str(spec).strip().partition("[")
    name = name.strip()
    if "]" in name or (bracket and not inner.endswith("]")) or "[" in inner:
        raise SpecError("brackets misplaced")
    if not bracket:
        return name, None
    body = inner[:-1].strip()
    if not body:
        raise SpecError("empty brackets")
    items: list[tuple[str, str]] = []
    for item in body.split(","):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not key or not value:
            raise SpecError(f"{item.strip()!r} is not key=value")
        if key in (k for k, _ in items):
            raise SpecError(f"{key} is given twice")
        items.append((key, value))
    return name, items


def number(value: float | int) -> str:
    """A number written shortest: 0.5, 0.05, 1e-05, 50000; a whole float without .0."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def write(name: str, items: list[tuple[str, object]]) -> str:
    """The canonical spelling: name[k=v,...] in the order given (callers sort), numbers
    shortest; the plain name without items."""
    if not items:
        return name
    inner = ",".join(f"{k}={number(v) if isinstance(v, (int, float)) else v}" for k, v in items)
    return f"{name}[{inner}]"
