"""The ground floor: the project settings (``gatewise.yaml`` + ``GATEWISE_*``), each room's
section as a leaf module, and the data-dir paths. Imports no room.

    from config import load_settings
    settings = load_settings()          # ./gatewise.yaml or $GATEWISE_CONFIG, then env
"""

from config.settings import ConfigError, Settings, load_settings, settings_for_flow

__all__ = ["ConfigError", "Settings", "load_settings", "settings_for_flow"]
