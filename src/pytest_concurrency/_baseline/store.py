"""Saved sessions, ``.storms/NAME.json``: named, checked, merged storm by storm, saved under a lock.

A baseline is a session document (the JSON report's schema) whose storms also carry their
``sessions``: one summary per save, the last :data:`~.noise.HISTORY` of them, whose spread
is how far the storm moves between sessions on its own. A read, merge and write happen
under an exclusive lock and the file is replaced atomically, so concurrent saves each keep
their storms and a reader never sees half a file. A figure that would switch a gate off
(missing, NaN, infinite, negative) is refused on save and on load.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .._report._files import LOCK_TIMEOUT, locked
from .._report._json import READABLE_VERSIONS, SCHEMA_VERSION, write_json
from .._report._records import FIGURES
from .._report._schema import first_problem
from .figures import compared_figures
from .noise import (
    HISTORY,
    HISTORY_FIGURES,
    ROUND_KEYS,
    cpu_share,
    cpu_slowdown,
    machine_load,
    round_values,
)

__all__ = [
    "DEFAULT_DIRECTORY",
    "LONGEST_NAME",
    "baseline_path",
    "figure_problems",
    "load",
    "load_document",
    "merge_documents",
    "merged_for_save",
    "save",
    "save_merged",
    "session_summary",
    "with_history",
]

DEFAULT_DIRECTORY = ".storms"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


#: Longest baseline name: ``NAME.json`` and the temporary and lock files beside it must
#: fit the 255 bytes most file systems allow a file name.
LONGEST_NAME = 100


def baseline_path(name: str, directory: str | os.PathLike[str], *, option: str = "") -> Path:
    """``directory/NAME.json``; a name with a path separator or odd characters is refused."""
    stem = name.removesuffix(".json")
    where = f"{option}={name!r}" if option else f"baseline name {name!r}"
    if not _NAME.fullmatch(stem):
        raise ConfigError(
            f"{where}: a baseline name is letters, digits, '.', '_' and '-' (such as main or "
            "py311-linux); it is stored as NAME.json in the storage directory"
        )
    if len(stem) > LONGEST_NAME:
        shown = f"{option}={name[:40] + '…'!r}" if option else f"baseline name {name[:40]!r}…"
        raise ConfigError(
            f"{shown}: the name is {len(stem)} characters long; a baseline name has at "
            f"most {LONGEST_NAME} (it is stored as NAME.json in the storage directory)"
        )
    return Path(directory) / f"{stem}.json"


def _storm_key(entry: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(entry.get("nodeid", "")), str(entry.get("label", "")), int(entry.get("index", 0)))


def merge_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """*new* with the storms of *old* that it does not have (matched by node id, label, index).

    Returns the merged document and how many storms it kept from *old*. A session that ran
    some tests (``--lf``, ``-k``) then updates their storms and leaves the others.
    """
    fresh = {_storm_key(entry) for entry in new.get("storms", [])}
    kept = [entry for entry in old.get("storms", []) if _storm_key(entry) not in fresh]
    merged = dict(new)
    merged["storms"] = [*kept, *new.get("storms", [])]
    return merged, len(kept)


def merged_for_save(
    name: str,
    doc: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    replace: bool = False,
    option: str = "--concurrency-save",
) -> tuple[Path, dict[str, Any], int]:
    """Where baseline *name* goes, the document to write there, and the storms kept from before.

    An existing baseline of that name is merged with *doc* storm by storm (its storms that
    did not run this session are kept) unless *replace*. An existing file that is not a
    valid baseline is a :class:`ConfigError`: it is neither merged nor silently lost. So is
    a storm of *doc* with a compared figure that is not a finite number of at least 0 (a
    storm that measured nothing): saved, it would switch the next run's gate off.
    """
    path = baseline_path(name, directory, option=option)
    for entry in doc.get("storms", []):
        problems = figure_problems(entry) if isinstance(entry, Mapping) else []
        if problems:
            raise ConfigError(
                f"{option}={name!r}: storm {storm_title(entry)} cannot be saved as a "
                f"baseline: {'; '.join(problems)}. A gate compared with such a figure would "
                f"pass anything, so {path} was left as it was (fix the storm, or leave its "
                "test out of the saving run with -k)"
            )
    doc = _with_load(doc)
    if replace or not path.is_file():
        return path, with_history(doc, None), 0
    old = load_document(path, option=f"{option}={name!r}")
    merged, kept = merge_documents(old, with_history(doc, old))
    return path, merged, kept


def save_merged(
    name: str,
    doc: Mapping[str, Any],
    directory: str | os.PathLike[str],
    *,
    replace: bool = False,
    option: str = "--concurrency-save",
) -> tuple[Path, int]:
    """Save *doc* as baseline *name* (see :func:`merged_for_save`); the path and storms kept.

    The read, the merge and the write happen under an exclusive lock on ``NAME.json.lock``,
    so sessions saving the same baseline at once each keep their storms; the file is
    replaced atomically, so a reader sees the old baseline or the new one, never a mix.
    """
    path = baseline_path(name, directory, option=option)
    try:
        with locked(path, timeout=LOCK_TIMEOUT):
            path, merged, kept = merged_for_save(
                name, doc, directory, replace=replace, option=option
            )
            return write_json(path, merged), kept
    except TimeoutError as exc:
        raise ConfigError(
            f"{option}={name!r}: another process is saving {path} and still holds its lock "
            f"({exc.filename}) after {LOCK_TIMEOUT:g} s; the baseline was not saved"
        ) from None


def with_history(doc: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """*doc* whose storms carry their ``sessions``: the last :data:`HISTORY` saves of each.

    Each save of a storm adds one summary of its figures (medians over its rounds) to the
    sessions its previous save had (a baseline saved before history was kept starts with
    its own figures). Their spread is how far the storm moves between sessions on its own,
    which the rounds of one session cannot show.
    """
    before = {_storm_key(e): e for e in (old or {}).get("storms", []) if isinstance(e, Mapping)}
    created = str(doc.get("created", ""))
    storms = []
    for entry in doc.get("storms", []):
        previous = before.get(_storm_key(entry))
        sessions: list[Any] = []
        if previous is not None:
            kept = previous.get("sessions")
            if isinstance(kept, list) and kept:
                sessions = [s for s in kept if isinstance(s, Mapping)]
            else:
                sessions = [session_summary(previous, str((old or {}).get("created", "")))]
        storms.append(
            {**entry, "sessions": [*sessions, session_summary(entry, created)][-HISTORY:]}
        )
    out = dict(doc)
    out["storms"] = storms
    return out


def session_summary(data: Mapping[str, Any], created: str) -> dict[str, Any]:
    """One session of a storm as its history keeps it: figures (medians over rounds), CPU."""
    point = compared_figures(data)
    summary: dict[str, Any] = {"created": created}
    for figure in HISTORY_FIGURES:
        values = round_values(data, figure)
        value = statistics.median(values) if values else point.get(figure, math.nan)
        if isinstance(value, int | float) and math.isfinite(value):
            summary[figure] = round(float(value), 4)
    slowdown = cpu_slowdown(data)
    if slowdown is not None:
        summary["cpu_slowdown"] = round(slowdown, 4)
    summary["cpu_share"] = round(cpu_share(data), 4)
    return summary


def _with_load(doc: Mapping[str, Any]) -> dict[str, Any]:
    # The load a session saw is what a later comparison needs to tell a slower machine from
    # slower code; a document that already states it keeps its own.
    out = dict(doc)
    machine = dict(out.get("machine") or {})
    if "load" not in machine:
        load = machine_load()
        if load is not None:
            machine["load"] = load
    out["machine"] = machine
    return out


def save(
    name: str, doc: Mapping[str, Any], directory: str | os.PathLike[str], *, replace: bool = False
) -> Path:
    """Keep *doc* as the baseline *name*, merged by storm into one of that name unless *replace*."""
    return save_merged(name, doc, directory, replace=replace)[0]


#: Smallest value a compared figure may have (every figure is a time, a rate or a share).
_LEAST = 0.0


def figure_problems(entry: Mapping[str, Any]) -> list[str]:
    """What is wrong with a storm's compared figures, as ``p99 is null (not measured)``.

    A compared figure that is missing, null, not a number, NaN, infinite or negative would
    switch a gate off (a comparison with NaN is never a regression; one with infinity is
    always an improvement), so a baseline may hold none. The figures of each round, which
    bound the noise, are held to the same rule where they are given.
    """
    problems = []
    for name, (where, _, _) in FIGURES.items():
        value: Any = entry
        present = True
        for step in where:
            if not isinstance(value, Mapping) or step not in value:
                present = False
                break
            value = value[step]
        problem = _figure_problem(value) if present else "is missing"
        if problem is not None:
            problems.append(f"{name} {problem}")
    rounds = entry.get("rounds")
    for i, one in enumerate(rounds if isinstance(rounds, list) else []):
        if not isinstance(one, Mapping):
            continue
        for name in ROUND_KEYS:
            value = one.get(name)
            if value is None:  # a round may lack a figure; it is left out of the spread
                continue
            problem = _figure_problem(value)
            if problem is not None:
                problems.append(f"rounds[{i}].{name} {problem}")
    return problems


def _figure_problem(value: Any) -> str | None:
    if value is None:
        return "is null (not measured)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"is {value!r}, not a number"
    if not math.isfinite(value):
        return f"is {value!r}, not a finite number"
    if value < _LEAST:
        return f"is {value!r}, below {_LEAST:g}"
    return None


def storm_title(entry: Mapping[str, Any]) -> str:
    index = entry.get("index")
    suffix = f" [{index}]" if isinstance(index, int) and index else ""
    return f"{entry.get('nodeid', '?')} · {entry.get('label', '?')}{suffix}"


def load_document(path: Path, *, option: str) -> dict[str, Any]:
    """Read and check a saved session document; every defect is a :class:`ConfigError`."""
    where = f"{option}: baseline {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(
            f"{where} nests its values too deeply to be read; it is not a session document "
            "(save it again with --concurrency-save)"
        ) from None
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise ConfigError(f"{where} is not a pytest-storm session document (no schema_version)")
    if doc["schema_version"] not in READABLE_VERSIONS:
        raise ConfigError(
            f"{where} has schema_version {doc['schema_version']!r}; this pytest-storm reads "
            f"version {SCHEMA_VERSION} (save it again with --concurrency-save)"
        )
    problem = first_problem(doc)
    if problem is not None:
        storm = re.match(r"storms\[(\d+)\]", problem)
        if storm is not None and isinstance(doc["storms"][int(storm.group(1))], Mapping):
            problem += f" (storm {storm_title(doc['storms'][int(storm.group(1))])})"
        raise ConfigError(
            f"{where} does not fit the session document schema: {problem} "
            "(save it again with --concurrency-save, or replace it with --concurrency-save-replace)"
        )
    for entry in doc["storms"]:
        problems = figure_problems(entry)
        if problems:
            raise ConfigError(
                f"{where}: storm {storm_title(entry)}: {'; '.join(problems)}. A compared "
                "figure must be a finite number of at least 0, or a gate compared with it "
                "would pass anything (replace the baseline with --concurrency-save-replace)"
            )
    return doc


def load(name: str, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The baseline *name*; a missing one is a :class:`ConfigError` listing those that exist."""
    path = baseline_path(name, directory, option="--concurrency-compare")
    if not path.is_file():
        found = sorted(p.stem for p in Path(directory).glob("*.json"))
        have = f"saved baselines: {', '.join(found)}" if found else "no baseline is saved there"
        raise ConfigError(
            f"--concurrency-compare={name!r}: no baseline {path} ({have}; "
            "save one with --concurrency-save=NAME)"
        )
    return load_document(path, option=f"--concurrency-compare={name!r}")
