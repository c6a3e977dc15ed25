"""What `prlbench ls` lists: every registered data set, model and loss with one line each."""

from __future__ import annotations

from prlbench.errors import ConfigError

KINDS = ("datasets", "models", "losses")


def listing(kind: str) -> list[tuple[str, str]]:
    """(name, description) of every registered data set, model or loss, in registry order."""
    if kind == "datasets":
        from prlbench.data.datasets import DATASETS

        return [(n, DATASETS.get(n).description + _access_text(DATASETS.get(n)))
                for n in DATASETS]
    if kind == "models":
        from prlbench.models import MODELS

        return [(n, getattr(MODELS.get(n), "summary", "")) for n in MODELS]
    if kind == "losses":
        from prlbench.losses import LOSSES, loss_info

        return [(n, loss_info(n).summary + _params_text(loss_info(n).params)) for n in LOSSES]
    raise ConfigError(f"prlbench ls {kind}: expected one of {', '.join(KINDS)}")


def _params_text(params: dict) -> str:
    """" (--lambda 0.5, --norm pairs|paper)": each parameter's flag and default (and choices)."""
    if not params:
        return ""
    items = [f"{p.flag} {'|'.join(p.choices) if p.choices else f'{p.default:g}'}"
             + (f" (default {p.default})" if p.choices else "") for p in params.values()]
    return f". Options: {', '.join(items)}"


def _access_text(spec) -> str:
    """". Licence CC BY-SA 4.0, 47.4 MB download, no login": what a data set's spec states."""
    parts = [f"licence {spec.licence}" if spec.licence else "",
             f"{spec.size_bytes / 1e6:.1f} MB download" if spec.size_bytes else "",
             {True: "login needed", False: "no login"}.get(spec.needs_login, "")]
    text = ", ".join(p for p in parts if p)
    return f". {text[:1].upper()}{text[1:]}" if text else ""
