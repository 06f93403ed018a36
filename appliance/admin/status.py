"""The figures of `status`, read from what the running server already keeps: its metrics'
plain counts (appliance/gateway/metrics.py) and the engine's cheap reads. Nothing is counted
twice, so a dashboard polling `status` costs the gateway a few reads."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from typing import Protocol

from appliance.gateway.metrics import ServerMetrics
from appliance.protocol.admin_frames import AdminStatusData
from appliance.protocol.version import PROTOCOL_VERSION
from engine.records import SEALED_FORMAT_VERSION, TenantRecord

__all__ = ["server_status"]


class TenantList(Protocol):
    def tenants(self) -> list[tuple[int, TenantRecord]]: ...


def _version() -> str:
    try:
        return importlib.metadata.version("herald")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "unknown"


def server_status(
    metrics: ServerMetrics, store: TenantList, clock_s: Callable[[], float] = time.time,
) -> Callable[[], AdminStatusData]:
    """What answers `status` for the server whose figures `metrics` keeps."""
    version = _version()

    def status() -> AdminStatusData:
        used, mapped = metrics.store.store_usage()
        return AdminStatusData(
            version=version, store_format=SEALED_FORMAT_VERSION, protocol=PROTOCOL_VERSION,
            uptime_s=round(max(0.0, clock_s() - metrics.started_s), 3),
            connections=metrics.connections(), online_users=metrics.hub.online_users,
            tenants=len(store.tenants()), store_used_bytes=used, store_map_bytes=mapped)

    return status
