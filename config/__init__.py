"""Settings from environment variables, in one place (docs/api.md lists every variable
and its default)."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
