"""``python -m examples.claims [--quick] [--out DIR]``: the framework-claims demo (``make demo``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Libraries the example apps are written with (the ``examples`` extra of pytest-storm).
FRAMEWORKS = ("fastapi", "starlette", "flask", "django", "pydantic")

#: Exit status when the demo cannot start (as the ``pytest-storm`` command's usage errors).
CANNOT_START = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit 2 with one line naming the missing library if a framework is absent."""
    try:
        # Every example is stormed, so every framework is needed: fail before the first storm.
        for name in FRAMEWORKS:
            importlib.import_module(name)
    except ModuleNotFoundError as exc:
        print(
            f"python -m examples.claims: the demo needs {name}, which is not installed: "
            f"pip install 'pytest-storm[examples]' (make demo installs it) ({exc})",
            file=sys.stderr,
        )
        return CANNOT_START
    from examples.claims.runner import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
