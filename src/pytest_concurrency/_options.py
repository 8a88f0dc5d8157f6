"""Where a storm's parameters and the run's options come from, resolved in one place.

Precedence: keyword argument > ``@pytest.mark.concurrency`` > command-line option
``--concurrency-NAME`` > ini option ``concurrency_NAME`` > default. Every value keeps
the words that name its source, so an error says where the bad value was written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._errors import ConfigError
from ._params import Layer, check_names
from ._spec.table import PARAMS

__all__ = [
    "RUN_DEFAULTS",
    "Setting",
    "add_run_options",
    "add_string_options",
    "disabled",
    "flag",
    "marker_layer",
    "run_layers",
    "scale",
    "setting",
    "storm_layers",
]


class _RunDefaults(Mapping[str, tuple[type, str]]):
    """Parameters that can also be set for the whole run: option --concurrency-NAME, ini
    concurrency_NAME -> (type, help); the rows of ``_spec.table`` with ``run_wide``, read when
    asked."""

    def _live(self) -> dict[str, tuple[type, str]]:
        return {
            name: (row.run_wide, row.run_help or row.help)
            for name, row in PARAMS.items()
            if row.run_wide is not None
        }

    def __getitem__(self, name: str) -> tuple[type, str]:
        return self._live()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())


RUN_DEFAULTS: Mapping[str, tuple[type, str]] = _RunDefaults()

_SCALE_HELP = (
    "scale users, rates, durations and request counts of every storm by FACTOR for a quick "
    "local run (budgets unchanged; reports say so)"
)
_DISABLE_HELP = "skip every test that uses the storm fixture (with a reason)"


def flag(name: str) -> str:
    """The command-line option of run setting *name*: ``--concurrency-NAME``."""
    return "--concurrency-" + name.replace("_", "-")


def add_string_options(parser: pytest.Parser, options: Mapping[str, tuple[str, str]]) -> None:
    """For each ``NAME -> (METAVAR, help)`` of *options*: the option ``--concurrency-NAME``
    and its ini twin ``concurrency_NAME``, both unset by default, with the same help."""
    group = parser.getgroup("concurrency")
    for name, (metavar, help_text) in options.items():
        group.addoption(
            flag(name),
            dest=f"concurrency_{name}",
            default=None,
            metavar=metavar,
            # argparse %-formats option help (not ini help): "p99_ms:10%" must be escaped there.
            help=help_text.replace("%", "%%"),
        )
        parser.addini(f"concurrency_{name}", help_text, default=None)


def add_run_options(parser: pytest.Parser) -> None:
    """Options ``--concurrency-*`` for storm defaults, scale and disable, with ini twins."""
    group = parser.getgroup("concurrency", "request storms (pytest-storm)")
    for name, (kind, help_text) in RUN_DEFAULTS.items():
        group.addoption(
            flag(name),
            dest=f"concurrency_{name}",
            default=None,
            metavar=kind.__name__.upper(),
            help=help_text,
        )
        parser.addini(f"concurrency_{name}", help_text, default=None)
    group.addoption(
        flag("scale"), dest="concurrency_scale", default=None, metavar="FACTOR", help=_SCALE_HELP
    )
    parser.addini("concurrency_scale", _SCALE_HELP, default=None)
    group.addoption(
        flag("disable"),
        dest="concurrency_disable",
        action="store_true",
        default=None,
        help=_DISABLE_HELP,
    )
    parser.addini("concurrency_disable", _DISABLE_HELP, type="bool", default=False)


@dataclass(frozen=True)
class Setting:
    """A run setting's raw value, the words that name where it was set, and its base directory.

    Paths given on the command line are relative to the directory pytest was started in;
    paths from the ini file are relative to the ini file.
    """

    value: Any
    origin: str
    base: Path
    #: How a message about a report option names it: the flag itself, or the ini option.
    label: str = ""

    @property
    def is_option(self) -> bool:
        """True when it was set on the command line (not in the ini file)."""
        return self.origin.startswith("command-line")

    def path(self) -> Path:
        """The value as a path, resolved against :attr:`base`."""
        return (self.base / str(self.value)).resolve()


def setting(config: pytest.Config, name: str) -> Setting | None:
    """The command-line option ``--concurrency-NAME``, else its ini twin, else None."""
    raw = config.getoption(f"concurrency_{name}", None)
    if raw not in (None, ""):
        where = flag(name)
        return Setting(raw, f"command-line option {where}", config.invocation_params.dir, where)
    try:
        raw_ini = config.getini(f"concurrency_{name}")
    except ValueError:  # not registered: the option belongs to a plugin that is not loaded
        return None
    if raw_ini in (None, "", []):
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    value = raw_ini.strip() if isinstance(raw_ini, str) else raw_ini
    origin = f"ini option concurrency_{name} in {config.inipath}"
    return Setting(value, origin, base, origin)


def scale(config: pytest.Config) -> tuple[float, str] | None:
    """The load scale factor of the run and where it was set, or None; validated."""
    found = setting(config, "scale")
    if found is None:
        return None
    try:
        factor = float(found.value)
    except (TypeError, ValueError):
        factor = float("nan")
    if not factor > 0 or factor == float("inf"):
        raise ConfigError(
            f"scale={found.value!r} (from {found.origin}) must be a number greater than 0"
        )
    return factor, found.origin


def disabled(config: pytest.Config) -> bool:
    """True when ``--concurrency-disable`` (or its ini twin) skips every storm."""
    option = config.getoption("concurrency_disable", None)
    return bool(option) if option is not None else bool(config.getini("concurrency_disable"))


def marker_layer(item: pytest.Item) -> Layer:
    """The ``concurrency`` markers of *item*; a function's marker overrides its class's and module's."""
    values: dict[str, Any] = {}
    origin = f"@pytest.mark.concurrency on {item.nodeid}"
    for marker in item.iter_markers("concurrency"):
        if marker.args:
            raise ConfigError(
                f"@pytest.mark.concurrency({', '.join(map(repr, marker.args))}) on {item.nodeid} "
                "takes keyword arguments only, such as @pytest.mark.concurrency(users=50, p99_ms=100)"
            )
        check_names(marker.kwargs, origin)
        for key, value in marker.kwargs.items():
            values.setdefault(key, value)
    return Layer(origin, values)


def _convert(name: str, found: Setting, kind: type) -> Any:
    try:
        return kind(found.value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}={found.value!r} (from {found.origin}) must be a {kind.__name__}"
        ) from None


def run_layers(config: pytest.Config) -> list[Layer]:
    """The run-wide storm defaults: the command-line layer, then the ini layer."""
    options: dict[str, Any] = {}
    ini: dict[str, Any] = {}
    for name, (kind, _) in RUN_DEFAULTS.items():
        found = setting(config, name)
        if found is not None:
            (options if found.is_option else ini)[name] = _convert(name, found, kind)
    return [Layer("command-line options", options), Layer("ini options", ini)]


def storm_layers(item: pytest.Item, keywords: Mapping[str, Any]) -> list[Layer]:
    """Every parameter layer of a storm in *item*, highest precedence first."""
    return [Layer("keyword argument", keywords), marker_layer(item), *run_layers(item.config)]
