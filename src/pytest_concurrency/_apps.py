"""Recognise what kind of application a callable is: ASGI 3, ASGI 2 or WSGI."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Literal

from asgiref.compatibility import guarantee_single_callable, is_double_callable

from ._errors import ConfigError

Interface = Literal["asgi", "wsgi"]

__all__ = ["Interface", "app_label", "as_asgi3", "detect_interface", "import_name", "load_app"]


def _positional_arity(func: Any) -> int | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    count = 0
    for param in sig.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            count += 1
        elif param.kind is param.VAR_POSITIONAL:
            return None
    return count


def _is_coroutine_callable(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - instances with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def detect_interface(app: Any, *, origin: str = "argument app") -> Interface:
    """Return ``"asgi"`` or ``"wsgi"`` for *app*, or raise :class:`ConfigError`."""
    if not callable(app):
        raise ConfigError(
            f"app={app!r} (from {origin}) is not callable: pass an ASGI or WSGI application "
            "(FastAPI, Starlette, Django, Flask, or an `async def app(scope, receive, send)` / "
            "`def app(environ, start_response)` callable)"
        )
    if _is_coroutine_callable(app):
        return "asgi"
    if inspect.isclass(app):
        # ASGI 2: a class constructed with the scope, whose instance is awaited.
        if is_double_callable(app):  # type: ignore[no-untyped-call]
            return "asgi"
        raise ConfigError(f"app={app!r} (from {origin}) is a class, not an application instance")
    arity = _positional_arity(app)
    if arity == 2:
        return "wsgi"
    if arity == 3:
        # A sync __call__(scope, receive, send) that returns an awaitable (some wrappers do).
        return "asgi"
    if arity == 1 and is_double_callable(app):  # type: ignore[no-untyped-call]
        return "asgi"
    raise ConfigError(
        f"app={app!r} (from {origin}) is neither ASGI nor WSGI: expected "
        "`async def app(scope, receive, send)` (ASGI 3), `def app(scope)` returning an ASGI "
        "instance (ASGI 2), or `def app(environ, start_response)` (WSGI); "
        "pass interface='asgi' or interface='wsgi' to say which"
    )


def as_asgi3(app: Any) -> Any:
    """Wrap an ASGI 2 app so that it can be called as ASGI 3."""
    return guarantee_single_callable(app)  # type: ignore[no-untyped-call]


def app_label(app: Any) -> str:
    """A short human name for *app*: ``module:name`` where it can be found."""
    wrapped = getattr(app, "__wrapped__", None)
    if wrapped is not None and wrapped is not app:
        return f"{app_label(wrapped)} (wrapped by {type(app).__name__})"
    if inspect.isfunction(app) or inspect.isclass(app) or inspect.ismethod(app):
        return f"{app.__module__}:{app.__qualname__}"
    found = _module_attribute(app)
    if found is not None:
        return found
    cls = type(app)
    import_name = getattr(app, "import_name", None)  # Flask
    if isinstance(import_name, str) and import_name:
        return f"{import_name}:{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__} instance"


def _module_attribute(app: Any) -> str | None:
    """``module:name`` of a module-level variable holding *app* (``examples.api:app``).

    Looks through the modules already imported, the user's own first (not installed
    packages), so a FastAPI or Flask instance is named the way a server command names it.
    """
    candidates: list[tuple[bool, str]] = []
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is app and not attr.startswith("_"):
                installed = "site-packages" in str(getattr(module, "__file__", "") or "")
                candidates.append((installed, f"{module_name}:{attr}"))
    return min(candidates)[1] if candidates else None


def _test_module(module: Any) -> bool:
    """True for a test module or conftest: it imports the app, a server is never pointed at it."""
    name = os.path.basename(str(getattr(module, "__file__", "") or ""))
    return name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py")


def import_name(app: Any, *, origin: str = "argument app") -> str | None:
    """The one ``module:name`` a server process can import to get *app*, or None if none.

    A server imports the app afresh, so two modules holding the same object may not build
    the same app there (one can re-export the other's app and add middleware to it): with
    several candidates, none is guessed. ``__main__`` is never importable by name; test
    modules and conftest files import the app rather than build it.
    """
    found: dict[str, Any] = {}
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if module_name == "__main__" or not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is app and not attr.startswith("_"):
                found[f"{module_name}:{attr}"] = module
    own = {n: m for n, m in found.items() if not _test_module(m)} or found
    modules = {name.partition(":")[0] for name in own}
    deepest = max(modules, key=len, default="")
    if all(deepest == m or deepest.startswith(m + ".") for m in modules):
        # One package chain (``pkg`` re-exporting ``pkg.main``'s app): importing the
        # deepest module imports every package above it, so it builds the same app.
        return min(n for n in own if n.partition(":")[0] == deepest) if own else None
    if len(modules) > 1:
        raise ConfigError(
            f"app={app_label(app)} (from {origin}) is held by module-level names in several "
            f"modules ({', '.join(sorted(own))}); a server process imports one of them afresh "
            "and they may not build the same app: give the app as an import string, e.g. "
            f"{min(own)!r}"
        )
    return min(own) if own else None


def load_app(spec: str, *, origin: str = "argument app", search_cwd: bool = False) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` (attr may be dotted) and return it.

    The one loader of the package: the command line, ``run_storm`` and the server
    processes all load an app through it, so a name means the same app everywhere. Any
    failure (a bad name, a module that raises or exits when imported, a missing
    attribute) is a :class:`ConfigError` naming ``app``. *search_cwd* puts the working
    directory first on ``sys.path`` for a module name (a console script lacks it).
    """
    where = f"app={spec!r} (from {origin})"
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{where} must look like MODULE:APP or path/to/file.py:APP")
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}: no file {path}")
        # Import as a module of its package when it is one, so relative imports work.
        root = path.parent
        parts = [path.stem]
        while (root / "__init__.py").exists():
            parts.insert(0, root.name)
            root = root.parent
        _prepend_path(str(root))
        name = ".".join(parts)
    else:
        if search_cwd:
            _prepend_path(os.getcwd())
        name = target
    if not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{where}: {name!r} is not a module name")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"{where}: {attr!r} is not an attribute name")
    try:
        module = importlib.import_module(name)
    except SystemExit as exc:
        # An app module that exits when imported (a script without a __main__ guard, an
        # argument parser at import time) would end the caller silently, status and all.
        raise ConfigError(
            f"{where}: importing {name} raised SystemExit({exc.code!r}): the module exits when "
            'it is imported; put that code under `if __name__ == "__main__":`'
        ) from None
    except Exception as exc:
        raise ConfigError(f"{where}: importing {name} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: {module.__name__} has no {attr!r}") from None
    return obj


def _prepend_path(entry: str) -> None:
    if entry not in sys.path:
        sys.path.insert(0, entry)
