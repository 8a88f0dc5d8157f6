"""The session document: every storm of a run as JSON, with the HDR histograms to re-merge them.

A document is what ``--concurrency-json`` writes and what ``--concurrency-save`` keeps as a
baseline. Its shape is :data:`JSON_SCHEMA`; ``schema_version`` changes only when a reader
of the old shape would misread the new one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from .._errors import ConfigError
from .._version import __version__
from ._files import check_directory, write_atomic
from ._records import StormRecord, StormRow, as_records

__all__ = [
    "JSON_SCHEMA",
    "SCHEMA_VERSION",
    "document_records",
    "ensure_writable",
    "load_json",
    "machine_info",
    "merge_histograms",
    "session_document",
    "write_json",
]

SCHEMA_VERSION = 2
#: Versions a reader accepts: 2 added the optional ``comparison`` and ``attribution``
#: blocks of a storm.
READABLE_VERSIONS = (1, 2)

_NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}

#: What both comparisons state: what the storm was compared with, the verdict, its line,
#: whether a regression fails the storm, and notes.
_COMPARISON_COMMON: dict[str, Any] = {
    "against": {"type": "string"},
    "verdict": {"type": "string"},
    "line": {"type": "string"},
    "fails": {"type": "boolean"},
    "notes": {"type": "array", "items": {"type": "string"}},
}

#: A storm's paired comparison with a control: the verdict, its line, and each figure's
#: paired change (ratio experiment/control, Hodges-Lehmann, with its signed-rank interval).
COMPARISON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["mode", "against", "verdict", "line", "pairs", "ended", "order", "figures"],
    "properties": {
        "mode": {"const": "paired"},
        **_COMPARISON_COMMON,
        "pairs": {"type": "integer", "minimum": 0},
        "ended": {"type": "string"},
        "seconds": {"type": "number", "minimum": 0},
        "order": {
            "type": "string",
            "description": "rounds in order: A control, B experiment, [AB] both at once (duet)",
        },
        "figures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["figure", "unit", "stable", "threshold", "verdict", "change"],
                "properties": {
                    "figure": {"type": "string"},
                    "unit": {"type": "string"},
                    "stable": {"type": "boolean"},
                    "threshold": {"type": "string"},
                    "verdict": {"type": "string"},
                    "change": {
                        "anyOf": [
                            {
                                "type": "object",
                                "required": ["pairs", "ratio", "low", "high", "confidence"],
                                "properties": {
                                    "pairs": {"type": "integer", "minimum": 0},
                                    "ratio": _NUMBER_OR_NULL,
                                    "low": _NUMBER_OR_NULL,
                                    "high": _NUMBER_OR_NULL,
                                    "confidence": {"type": "number", "minimum": 0},
                                    "control": _NUMBER_OR_NULL,
                                    "experiment": _NUMBER_OR_NULL,
                                },
                            },
                            {"type": "null"},
                        ]
                    },
                },
            },
        },
    },
}

#: A storm against a saved baseline (--concurrency-compare): the verdict and line the terminal
#: states, and every compared figure, the baseline's value and this session's; a figure a
#: threshold judged has its threshold, its verdict and the interval of its change in words.
SAVED_COMPARISON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["mode", "against", "verdict", "line", "figures"],
    "properties": {
        "mode": {"const": "saved"},
        **_COMPARISON_COMMON,
        "saved": {"type": "string", "description": "when the baseline was saved"},
        "figures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["figure", "unit", "threshold", "verdict", "change"],
                "properties": {
                    "figure": {"type": "string"},
                    "unit": {"type": "string"},
                    "threshold": {"type": ["string", "null"]},
                    "verdict": {"type": ["string", "null"]},
                    "interval": {"type": "string"},
                    "change": {
                        "type": "object",
                        "required": ["baseline", "current", "ratio"],
                        "properties": {
                            "baseline": _NUMBER_OR_NULL,
                            "current": _NUMBER_OR_NULL,
                            "ratio": _NUMBER_OR_NULL,
                        },
                    },
                },
            },
        },
    },
}

#: JSON Schema (draft 2020-12) of a session document.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:pytest-storm:session-document:2",
    "title": "pytest-storm session document",
    "description": (
        "Every storm of a pytest session: workload, budgets, verdicts, percentiles (ms), "
        "per-second timeline and HdrHistogram encodings (µs) that can be decoded and merged. "
        "A figure that is not a finite number (nothing measured) is null."
    ),
    "type": "object",
    "required": ["schema_version", "generator", "created", "machine", "scaled", "storms"],
    "properties": {
        "schema_version": {"anyOf": [{"const": v} for v in READABLE_VERSIONS]},
        "generator": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "created": {"type": "string", "description": "ISO 8601 time, UTC"},
        "machine": {"$ref": "#/$defs/machine"},
        "scaled": {
            "type": ["number", "null"],
            "description": "load scale factor applied from the command line, if any",
        },
        "storms": {"type": "array", "items": {"$ref": "#/$defs/storm"}},
    },
    "$defs": {
        "comparison": {"anyOf": [COMPARISON_SCHEMA, SAVED_COMPARISON_SCHEMA]},
        "machine": {
            "type": "object",
            "required": [
                "python",
                "implementation",
                "platform",
                "machine",
                "cpu_count",
                "cpu_model",
                "host",
            ],
            "properties": {
                "python": {"type": "string"},
                "implementation": {"type": "string"},
                "platform": {"type": "string"},
                "machine": {"type": "string"},
                "cpu_count": {"type": ["integer", "null"]},
                "cpu_usable": {"type": ["integer", "null"]},
                "cpu_model": {"type": ["string", "null"]},
                "host": {"type": "string", "description": "hash of the host name"},
                "noise": {"type": ["object", "null"]},
            },
        },
        "connection_pool": {
            "type": "object",
            "description": "one connection pool: size (null: no limit), peak and mean in use, "
            "saturation (share of the storm with every connection taken and a request "
            "waiting), each checkout's wait for a connection (ms), the time spent opening "
            "connections (s) and the requests that reused one left open (Django)",
            "required": ["name", "library", "size", "peak_in_use", "saturation", "checkouts"],
            "properties": {
                "name": {"type": "string"},
                "library": {"type": "string"},
                "size": {"type": ["integer", "null"]},
                "peak_in_use": {"type": "integer", "minimum": 0},
                "mean_in_use": {"type": "number", "minimum": 0},
                "full": {"type": "number", "minimum": 0},
                "saturation": {"type": "number", "minimum": 0},
                "checkouts": {"type": "integer", "minimum": 0},
                "waited": {"type": "integer", "minimum": 0},
                "wait_p50_ms": {"type": ["number", "null"]},
                "wait_p99_ms": {"type": ["number", "null"]},
                "connects": {"type": "integer", "minimum": 0},
                "connect_s": {"type": "number", "minimum": 0},
                "connect_p50_ms": {"type": ["number", "null"]},
                "duration_s": {"type": "number"},
                "fix": {"type": "string"},
                "reused": {"type": "integer", "minimum": 0},
                "text": {"type": "string"},
            },
        },
        "latency": {
            "type": "object",
            "description": "percentiles in milliseconds; null when nothing was measured",
            "required": ["count", "mean", "p50", "p90", "p99", "max"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "min": _NUMBER_OR_NULL,
                "mean": _NUMBER_OR_NULL,
                "stdev": _NUMBER_OR_NULL,
                "p50": _NUMBER_OR_NULL,
                "p75": _NUMBER_OR_NULL,
                "p90": _NUMBER_OR_NULL,
                "p95": _NUMBER_OR_NULL,
                "p99": _NUMBER_OR_NULL,
                "p999": _NUMBER_OR_NULL,
                "max": _NUMBER_OR_NULL,
            },
        },
        "refusal": {
            "type": "object",
            "description": "a connection off the machine refused during the storm",
            "required": ["host", "port", "client", "site", "count"],
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "string", "description": "empty when no port was given"},
                "client": {"type": "string", "description": "the client library that tried"},
                "site": {"type": "string", "description": "the app's line that made the call"},
                "count": {"type": "integer", "minimum": 1},
            },
        },
        "verdict": {
            "type": "object",
            "required": ["name", "limit", "measured", "ok"],
            "properties": {
                "name": {"type": "string"},
                "limit": {"type": "number"},
                "measured": _NUMBER_OR_NULL,
                "ok": {"type": "boolean"},
            },
        },
        "second": {
            "type": "object",
            "required": ["second", "requests", "errors", "p50", "p99", "max"],
            "properties": {
                "second": {"type": "integer", "minimum": 0},
                "requests": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
                "p50": _NUMBER_OR_NULL,
                "p99": _NUMBER_OR_NULL,
                "max": _NUMBER_OR_NULL,
                "busy_workers": _NUMBER_OR_NULL,
                "in_flight": _NUMBER_OR_NULL,
                "target": _NUMBER_OR_NULL,
            },
        },
        "part": {
            "type": "object",
            "description": "one part of requests' time: a wait (kind worker, pool, connect, "
            "upstream, proxy or loop, for what name says) or service (the rest)",
            "required": ["kind", "name", "ms", "share"],
            "properties": {
                "kind": {"type": "string"},
                "name": {"type": "string"},
                "ms": {"type": "number", "description": "milliseconds per request"},
                "share": {"type": "number", "minimum": 0, "description": "of latency"},
            },
        },
        "attribution": {
            "type": "object",
            "required": ["bands", "slowest"],
            "properties": {
                "side": {
                    "type": "string",
                    "description": "storm: the latency measured in-process; server: the "
                    "time in the app inside a real server's workers",
                },
                "bands": {
                    "type": "array",
                    "description": "requests between two ranks around p50 (p49.5–p50.5) and "
                    "p99 (p98.5–p99.5): their mean latency and its parts, largest first",
                    "items": {
                        "type": "object",
                        "required": ["label", "requests", "latency_ms", "parts"],
                        "properties": {
                            "label": {"type": "string"},
                            "requests": {"type": "integer", "minimum": 0},
                            "latency_ms": {"type": "number"},
                            "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
                        },
                    },
                },
                "slowest": {
                    "type": "array",
                    "description": "the slowest requests, slowest first",
                    "items": {
                        "type": "object",
                        "required": ["request", "status", "latency_ms", "sent_s", "parts"],
                        "properties": {
                            "request": {"type": "string"},
                            "status": {"type": "integer"},
                            "latency_ms": {"type": "number"},
                            "sent_s": {"type": "number"},
                            "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
                        },
                    },
                },
            },
        },
        "storm": {
            "type": "object",
            "required": [
                "nodeid",
                "index",
                "label",
                "app",
                "interface",
                "server",
                "users",
                "requests",
                "duration",
                "throughput",
                "latency",
                "status_counts",
                "errors",
                "failed",
                "error_rate",
                "timeline",
                "params",
                "budgets",
                "verdicts",
                "passed",
                "histograms",
            ],
            "properties": {
                "nodeid": {"type": "string"},
                "index": {"type": "integer", "minimum": 0},
                "label": {"type": "string"},
                "app": {"type": "string"},
                "interface": {"type": "string"},
                "server": {"type": "string"},
                "method": {"type": "string"},
                "path": {"type": "string"},
                "users": {
                    "type": "integer",
                    "description": "the users the storm was asked for (the configured users, "
                    "or the highest target of its stages); 0 for an open-model storm, whose "
                    "arrivals are not users (see peak_in_flight)",
                },
                "peak_in_flight": {
                    "type": ["integer", "null"],
                    "description": "most requests in flight at once, where the storm counted "
                    "them (the WSGI pool, the open model); absent in older documents",
                },
                "requests": {"type": "integer", "minimum": 0},
                "duration": _NUMBER_OR_NULL,
                "throughput": {
                    "type": ["number", "null"],
                    "description": "requests per second",
                },
                "latency": {"$ref": "#/$defs/latency"},
                "ttfb": {"$ref": "#/$defs/latency"},
                "queue_wait": {"anyOf": [{"$ref": "#/$defs/latency"}, {"type": "null"}]},
                "service_time": {"anyOf": [{"$ref": "#/$defs/latency"}, {"type": "null"}]},
                "status_counts": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                },
                "errors": {"type": "object"},
                "failed": {"type": "integer", "minimum": 0},
                "timeouts": {"type": "integer", "minimum": 0},
                "error_rate": {"type": "number", "minimum": 0},
                "pool": {"type": ["object", "null"]},
                "timeline": {"type": "array", "items": {"$ref": "#/$defs/second"}},
                "endpoints": {"type": "object"},
                "params": {"type": "object"},
                "budgets": {"type": "object", "additionalProperties": {"type": "number"}},
                "verdicts": {"type": "array", "items": {"$ref": "#/$defs/verdict"}},
                "passed": {"type": "boolean"},
                "refused_egress": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/refusal"},
                    "description": "connections off the machine refused during the storm, "
                    "most frequent first; absent in documents written before the egress guard",
                },
                "warnings": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "problems with the measurement (also ConcurrencyWarnings)",
                },
                "notes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "informational remarks (a knee, rounds, a scaled load); "
                    "absent in documents written before notes existed",
                },
                "connection_pools": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/connection_pool"},
                    "description": "the app's connection pools used during the storm "
                    "(SQLAlchemy, asyncpg, psycopg_pool, Django, httpx, aiohttp); absent in older "
                    "documents",
                },
                "sessions": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "in a saved baseline: the last sessions that saved this "
                    "storm (p50, p99, max, rps, cpu µs per request as medians over rounds; "
                    "cpu_slowdown; "
                    "cpu_share), the newest last; their spread is the storm's own noise "
                    "between sessions",
                },
                "attribution": {
                    "anyOf": [{"$ref": "#/$defs/attribution"}, {"type": "null"}],
                    "description": "in-process storms: where the p50 and p99 requests' time "
                    "and the slowest requests' went; behind a real server, their time in the "
                    "app as the workers' probes saw it (side: server); absent before schema "
                    "version 2",
                },
                "comparison": {
                    "anyOf": [{"$ref": "#/$defs/comparison"}, {"type": "null"}],
                    "description": "the storm against a control run paired with it "
                    "(mode paired, --concurrency-control) or against a saved baseline (mode "
                    "saved, --concurrency-compare); absent before schema version 2",
                },
                "histograms": {
                    "type": "object",
                    "description": "HdrHistogram encodings (compressed, base64) of values in µs",
                    "required": ["latency"],
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    },
}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                # x86 says "model name"; some ARM kernels only say "Hardware" or "Model".
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    """What this machine is, to tell whether two runs' figures are comparable at all."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    # A hash, not the name: documents get attached to CI artefacts and pull requests.
    host = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:12]
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "host": host,
    }


def session_document(
    rows: Sequence[StormRow | StormRecord],
    *,
    machine: Mapping[str, Any],
    scaled: float | None = None,
) -> dict[str, Any]:
    """Every storm of *rows* as a session document (see :data:`JSON_SCHEMA`)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "pytest-storm", "version": __version__},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "scaled": scaled,
        "storms": [_plain(_lifted(record.document_entry())) for record in as_records(rows)],
    }


def _lifted(entry: dict[str, Any]) -> dict[str, Any]:
    """A paired comparison travels in ``extras``; the document gives it its own block."""
    extras = entry.get("extras")
    if isinstance(extras, Mapping) and "comparison" in extras:
        rest = dict(extras)
        entry = {**entry, "extras": rest, "comparison": rest.pop("comparison")}
    return entry


def _plain(value: Any) -> Any:
    # JSON has no NaN or infinity, and a storm parameter may hold an object (a latency
    # distribution, say): the document keeps null and the object's text instead.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def ensure_writable(path: str | os.PathLike[str]) -> Path:
    """Check that a report can be written to *path* before any storm runs; :class:`OSError` if not.

    The parent directories are made and a temporary file created beside *path* and
    removed again: a report replaces its file, so the directory is what must be writable.
    """
    return check_directory(path)


def write_json(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Write *doc* to *path* (parent directories created; replaced atomically).

    A figure that is not a finite number is written as null, an object as its text.
    """
    # JSON has no NaN or infinity. Python would write them anyway (as ``NaN``, which other
    # readers refuse), so they are turned into null first and ``allow_nan=False`` makes
    # sure none is left. Null is what the schema says a figure is when nothing was
    # measured, and it can never switch a gate off: a document read as a baseline refuses
    # a compared figure that is null, and a baseline save refuses a storm that has one
    # (``_baseline.store.figure_problems``), so a run cannot save its way past its own gate.
    text = json.dumps(_plain(doc), indent=1, ensure_ascii=False, allow_nan=False)
    return write_atomic(path, text + "\n")


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a session document; :class:`ConfigError` when it is unreadable or of another version."""
    source = Path(path)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict) or "schema_version" not in doc or "storms" not in doc:
        raise ConfigError(f"{source}: not a pytest-storm session document (no schema_version)")
    version = doc["schema_version"]
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"{source}: session document schema_version {version!r}; this pytest-storm "
            f"({__version__}) reads version {SCHEMA_VERSION}"
        )
    if not isinstance(doc["storms"], list):
        raise ConfigError(f"{source}: 'storms' must be a list")
    return doc


def document_records(doc: Mapping[str, Any]) -> list[StormRecord]:
    """The storms of a session document as report rows."""
    return [
        StormRecord.from_dict(str(entry.get("nodeid", "")), int(entry.get("index", 0)), entry)
        for entry in doc.get("storms", [])
    ]


def merge_histograms(
    docs: Iterable[Mapping[str, Any]],
    *,
    match: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, HdrHistogram]:
    """Merge the histograms of every storm (or those *match* accepts) of *docs*, by name.

    Percentiles of the merged ``latency`` histogram are those of all the requests
    together, exactly as if they had been recorded into one histogram.
    """
    merged: dict[str, HdrHistogram] = {}
    for doc in docs:
        for storm in doc.get("storms", []):
            if match is not None and not match(storm):
                continue
            for name, encoded in (storm.get("histograms") or {}).items():
                if name in merged:
                    merged[name].decode_and_add(encoded)
                else:
                    merged[name] = HdrHistogram.decode(encoded)
    return merged
