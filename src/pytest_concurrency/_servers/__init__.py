"""Start, watch and stop real servers (uvicorn, hypercorn, granian, gunicorn) on loopback."""

from __future__ import annotations

from ._process import SERVER_KINDS, RunningServer, ServerSpec, live_servers, serve
from ._sampler import ResourceSampler, ResourceUsage

__all__ = [
    "SERVER_KINDS",
    "ResourceSampler",
    "ResourceUsage",
    "RunningServer",
    "ServerSpec",
    "live_servers",
    "serve",
]
