"""Settings from environment variables, in one place (contract §4)."""
from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
