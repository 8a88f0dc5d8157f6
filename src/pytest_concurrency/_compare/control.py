"""The control of a paired comparison: a git ref checked out into a temporary worktree, or a
directory; and where an app's module is found in it.

An app is found in the control by the same import path as in the experiment: the
module's file in the experiment gives the ``sys.path`` root it was imported from (a
``src/`` layout included); that root, relative to the experiment's repository, is
mapped into the control tree and put first on the control process's ``sys.path``. Every
other ``sys.path`` entry inside the repository (not an installed-packages directory) is
mapped the same way, so the control's own helper modules are the control's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._errors import ConfigError

__all__ = ["Control", "ControlTree", "module_root"]

_GIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class ControlTree:
    """A control tree ready to import from: where it is, and the repository it mirrors."""

    label: str
    path: Path
    repo: Path


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_GIT_TIMEOUT,
        check=False,
    )


def _toplevel(directory: Path) -> Path | None:
    try:
        found = _git(directory, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(found.stdout.strip()) if found.returncode == 0 else None


class Control:
    """``--concurrency-control=REF|PATH``: checked when built, checked out when first used,
    removed by :meth:`close` (which every exit path of the session calls)."""

    def __init__(self, value: str, *, origin: str, label: str, base: Path, rootdir: Path) -> None:
        self.value = value
        self.origin = origin
        self.option = label
        self._base = base
        self._rootdir = rootdir
        self._tree: ControlTree | None = None
        self._checkout: Path | None = None
        self._repo = _toplevel(base)
        directory = (base / value).resolve()
        if value.strip() == "":
            raise ConfigError(f"{label}={value!r} (from {origin}): name a git ref or a directory")
        if directory.is_dir():
            self._directory: Path | None = directory
            self._commit: str | None = None
            return
        self._directory = None
        if self._repo is None:
            raise ConfigError(
                f"{label}={value!r} (from {origin}) is not a directory, and {base} is not in a "
                "git repository where it could be a ref"
            )
        found = _git(self._repo, "rev-parse", "--verify", "--quiet", f"{value}^{{commit}}")
        if found.returncode != 0:
            raise ConfigError(
                f"{label}={value!r} (from {origin}) is neither a directory nor a commit, branch "
                f"or tag of the git repository {self._repo}"
            )
        self._commit = found.stdout.strip()

    @property
    def describe(self) -> str:
        """``main (1a2b3c4d5)`` for a ref, the directory's name for a directory."""
        if self._commit is not None:
            return f"{self.value} ({self._commit[:9]})"
        return self.value

    def tree(self) -> ControlTree:
        """The control tree, checked out on first use (``git worktree add --detach``)."""
        if self._tree is not None:
            return self._tree
        if self._directory is not None:
            repo = self._repo or self._rootdir
            self._tree = ControlTree(self.describe, self._directory, repo)
            return self._tree
        assert self._repo is not None
        assert self._commit is not None
        holder = Path(tempfile.mkdtemp(prefix="storm-control-"))
        self._checkout = holder
        target = holder / "tree"
        try:
            added = _git(self._repo, "worktree", "add", "--detach", str(target), self._commit)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.close()
            raise ConfigError(
                f"{self.option}={self.value!r}: git worktree add failed: {exc}"
            ) from None
        if added.returncode != 0:
            self.close()
            raise ConfigError(
                f"{self.option}={self.value!r} (from {self.origin}): could not check out "
                f"{self._commit[:9]}: {added.stderr.strip()}"
            )
        self._tree = ControlTree(self.describe, target, self._repo)
        return self._tree

    def close(self) -> None:
        """Remove the temporary worktree, if one was checked out (idempotent)."""
        holder, self._checkout = self._checkout, None
        self._tree = None if self._directory is None else self._tree
        if holder is None:
            return
        if self._repo is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _git(self._repo, "worktree", "remove", "--force", str(holder / "tree"))
        shutil.rmtree(holder, ignore_errors=True)
        if self._repo is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _git(self._repo, "worktree", "prune")


def _module_file(module: str) -> Path | None:
    loaded = sys.modules.get(module)
    where = getattr(loaded, "__file__", None) if loaded is not None else None
    if where is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        where = spec.origin if spec is not None else None
    if not where or where in ("built-in", "frozen"):
        return None
    return Path(where).resolve()


def module_root(spec: str, option: str) -> Path:
    """The ``sys.path`` root the module of *spec* (``module:attr``) is imported from."""
    module = spec.partition(":")[0]
    found = _module_file(module)
    if found is None:
        raise ConfigError(
            f"{option}: the app {spec!r} has no module file in the experiment to find it by in "
            "the control"
        )
    depth = module.count(".") + (1 if found.name == "__init__.py" else 0)
    root = found.parent
    for _ in range(depth):
        root = root.parent
    return root


def _installed(entry: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in entry.parts)


def control_path(tree: ControlTree, app_root: Path, option: str, spec: str) -> list[str]:
    """The control process's ``sys.path``: the app's root in the control first, then the
    experiment's entries, those inside its repository mapped into the control tree."""
    try:
        relative = app_root.relative_to(tree.repo)
    except ValueError:
        raise ConfigError(
            f"{option}: the app {spec!r} is imported from {app_root}, outside the repository "
            f"{tree.repo} the control {tree.label!r} mirrors: it cannot be found in the control"
        ) from None
    first = tree.path / relative
    entries = [str(first)]
    for raw in sys.path:
        entry = Path(raw or ".").resolve()
        if entry == app_root:
            continue
        try:
            inside = entry.relative_to(tree.repo)
        except ValueError:
            entries.append(str(entry))
            continue
        if _installed(entry):
            entries.append(str(entry))
        elif (tree.path / inside).is_dir():
            entries.append(str(tree.path / inside))
    return entries


def experiment_path(app_root: Path) -> list[str]:
    """The experiment process's ``sys.path``: the app's root first, then this process's."""
    rest = [str(Path(raw or ".").resolve()) for raw in sys.path]
    return [str(app_root), *(entry for entry in rest if entry != str(app_root))]
