"""The ``serving:`` section of ``gatewise.yaml``.

serving: {port: 3000, targets: [abuse], refresh_s: 2}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServingSettings"]


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    targets: list[str] = Field(default_factory=lambda: ["abuse"], description="loaded at start")
    refresh_s: float = Field(2.0, gt=0, description="how often aliases are checked for a move")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="BentoML worker processes; each loads the champion and its own store"
        " connection (docs/benchmarks.md: what a second worker buys on two cores)",
    )
    compiled: bool = Field(
        True,
        description="serve a champion's compiled (ONNX) form when it matches the pipeline on"
        " its check rows (models/compiled.py); false: always the scikit-learn pipeline",
    )
    online_read: Literal["direct", "sdk"] = Field(
        "direct",
        description="direct: the feature service's refs resolved once, the online store read"
        " through Feast's provider (features/online_read.py); sdk: get_online_features per call",
    )
    smoke_ids: int = Field(
        20, ge=1, description="entities the deploy flow scores as its smoke test"
    )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
