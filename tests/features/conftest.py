from __future__ import annotations

from pathlib import Path


def copy_settings(s, data_dir: Path, **features):
    return s.model_copy(
        update={"data_dir": data_dir, "features": s.features.model_copy(update=features)}
    )
