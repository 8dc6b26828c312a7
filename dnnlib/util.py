"""EasyDict: a dict whose keys are also attributes (the EDM family's config type)."""

from __future__ import annotations

from typing import Any


class EasyDict(dict):
    """dict with attribute access: ``cfg.lr`` is ``cfg['lr']``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]
