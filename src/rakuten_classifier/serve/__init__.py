"""The prediction API (`rakuten-classifier serve`, `make serve`): see docs/api.md."""

from rakuten_classifier.serve.app import create_app
from rakuten_classifier.serve.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "create_app", "load_settings"]
