"""One registry for every process-wide patch: replacements that nest and come off in any order.

The fake upstream replaces httpx's transport methods, the thread-pool probe wraps
``anyio.to_thread.run_sync``, asgiref's ``SyncToAsync.thread_handler`` and a loop's
``run_in_executor``. Two of each can be live at once (nested fixtures, a probe inside a
probe), and a plain save-and-restore pair is only right when they come off in the
reverse order: take off the outer one first and the inner one's restore puts the outer's
replacement back for good.

The registry keeps, per ``(owner, attribute)``, the value that was there before any patch
and a stack of live patches. The newest live patch is in effect; removing any patch puts
the newest of those left in place, and removing the last puts the original back, whatever
the order. A patch is a context manager, so ``with patch(...):`` restores on every exit
path, ``KeyboardInterrupt`` included.

A value someone else wrote over ours in the meantime (``monkeypatch.setattr`` in a test)
is theirs: the registry leaves it alone rather than clobber it with a value of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

__all__ = ["PATCHES", "Patch", "PatchRegistry", "patch", "remove_all", "wrap"]

_MISSING: Any = object()


def _own(owner: object, name: str) -> Any:
    """The value *owner* holds itself under *name* (not inherited), or ``_MISSING``."""
    try:
        namespace = vars(owner)
    except TypeError:  # no __dict__ (an extension type's instance)
        return getattr(owner, name, _MISSING)
    return namespace.get(name, _MISSING)


class Patch:
    """One live replacement of ``owner.name``; ``remove()`` it or use it as a context manager."""

    __slots__ = ("_registry", "_slot", "active", "name", "owner", "value")

    def __init__(self, registry: PatchRegistry, slot: _Slot, value: Any) -> None:
        self._registry = registry
        self._slot = slot
        self.owner: Any = slot.owner
        self.name: str = slot.name
        self.value: Any = value
        self.active = True

    def remove(self) -> None:
        """Take this replacement off; a second call does nothing."""
        self._registry._remove(self)

    def __enter__(self) -> Patch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "live" if self.active else "removed"
        owner = getattr(self.owner, "__qualname__", type(self.owner).__qualname__)
        return f"<Patch {owner}.{self.name} {state}>"


class _Slot:
    """One patched attribute: its original value and the live patches, oldest first."""

    __slots__ = ("base", "name", "original", "owner", "stack", "written")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name
        # What the owner held itself: put back as it was, or deleted when it held nothing
        # (an instance attribute shadowing its class's method, say).
        self.original: Any = _own(owner, name)
        # What reading the attribute gave before any patch: what wrappers call through to.
        self.base: Any = getattr(owner, name)
        self.stack: list[Patch] = []
        self.written: Any = _MISSING


class PatchRegistry:
    """Live patches by ``(owner, attribute)``; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[tuple[int, str], _Slot] = {}

    def patch(self, owner: Any, name: str, value: Any) -> Patch:
        """Replace ``owner.name`` with *value* until the returned patch is removed."""
        return self._install(owner, name, lambda _base: value)

    def wrap(self, owner: Any, name: str, factory: Callable[[Any], Any]) -> Patch:
        """Replace ``owner.name`` with ``factory(original)``, the original as read before any patch.

        Every wrapper wraps the original, not the patch below it, so taking off a patch in
        the middle never leaves a wrapper calling into one that is gone.
        """
        return self._install(owner, name, factory)

    def original(self, owner: Any, name: str) -> Any:
        """``owner.name`` as it reads with no registered patch in place."""
        with self._lock:
            slot = self._slots.get((id(owner), name))
            return getattr(owner, name) if slot is None else slot.base

    def patched(self, owner: Any, name: str) -> list[Patch]:
        """The live patches of ``owner.name``, oldest first."""
        with self._lock:
            slot = self._slots.get((id(owner), name))
            return [] if slot is None else list(slot.stack)

    def _install(self, owner: Any, name: str, factory: Callable[[Any], Any]) -> Patch:
        with self._lock:
            key = (id(owner), name)
            slot = self._slots.get(key)
            fresh = slot is None
            if slot is None:
                slot = _Slot(owner, name)
            value = factory(slot.base)
            # Written before anything is recorded: an owner that refuses the attribute
            # (AttributeError, TypeError) leaves the registry as it was.
            setattr(owner, name, value)
            if fresh:
                self._slots[key] = slot
            slot.written = _own(owner, name)
            installed = Patch(self, slot, value)
            slot.stack.append(installed)
            return installed

    def _remove(self, removed: Patch) -> None:
        with self._lock:
            if not removed.active:
                return
            removed.active = False
            slot = removed._slot
            slot.stack.remove(removed)
            owner, name = slot.owner, slot.name
            current = _own(owner, name)
            if not slot.stack:
                del self._slots[id(owner), name]
            if current is not slot.written:
                return  # someone else's value is on top: theirs to undo
            if slot.stack:
                setattr(owner, name, slot.stack[-1].value)
                slot.written = _own(owner, name)
            elif slot.original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, slot.original)


PATCHES = PatchRegistry()
"""The process-wide registry every patch of the plugin goes through."""


def patch(owner: Any, name: str, value: Any) -> Patch:
    """Replace ``owner.name`` with *value* through the process-wide registry."""
    return PATCHES.patch(owner, name, value)


def wrap(owner: Any, name: str, factory: Callable[[Any], Any]) -> Patch:
    """Replace ``owner.name`` with ``factory(original)`` through the process-wide registry."""
    return PATCHES.wrap(owner, name, factory)


def remove_all(patches: Iterable[Patch]) -> None:
    """Remove each patch, newest first, even when removing one of them raises."""
    ordered = list(patches)
    try:
        if ordered:
            ordered[-1].remove()
    finally:
        if len(ordered) > 1:
            remove_all(ordered[:-1])
