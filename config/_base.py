"""The base of every settings model: unknown keys are errors, so a typo in gatewise.yaml
is named instead of silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
