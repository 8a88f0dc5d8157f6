"""Recognise what kind of application a callable is: ASGI 3, ASGI 2 or WSGI."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Literal

from asgiref.compatibility import guarantee_single_callable, is_double_callable

from ._errors import ConfigError

Interface = Literal["asgi", "wsgi"]

__all__ = ["Interface", "app_label", "as_asgi3", "detect_interface"]


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
