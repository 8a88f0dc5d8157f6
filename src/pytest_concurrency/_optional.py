"""Optional dependencies: imported only when the feature that needs them is asked for."""

from __future__ import annotations

import importlib.util

from ._errors import ConfigError

__all__ = ["installed", "require"]


def installed(module: str) -> bool:
    """Whether *module* can be imported (a broken or blocked one cannot)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(modules: tuple[str, ...], extra: str, feature: str) -> None:
    """Raise :class:`ConfigError` naming *feature* and the extra when a module is missing."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise ConfigError(
            f"{feature} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install 'pytest-storm[{extra}]'"
        )
