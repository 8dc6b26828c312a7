"""CheckedConfig: the dict round trip of a run's settings dataclass, unknown names refused."""

from __future__ import annotations

import dataclasses
from typing import Any


class CheckedConfig:
    """Methods shared by the settings dataclasses (``inverse.config.ReconConfig``,
    ``training.config.TrainConfig``). A subclass is a dataclass and names what it configures in
    ``KIND`` ('reconstruction', 'training'), the word the errors use."""

    KIND = "run"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_names(cls, names) -> None:
        """ValueError listing the valid fields if any of ``names`` is not one."""
        valid = cls.field_names()
        unknown = sorted(k for k in names if k not in valid)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} option(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(valid)}")

    def to_dict(self) -> dict:
        """Plain dict of every field, in field order (what a run's ``config.json`` starts from)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (unknown names are a ``ValueError``)."""
        self.check_names(changes)
        return dataclasses.replace(self, **changes)
