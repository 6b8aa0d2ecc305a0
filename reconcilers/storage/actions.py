"""Actions on storage pools (the StorageDomain controller's family)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import PoolConfig
from reconcilers.plan import HostAction


@dataclass(frozen=True)
class EnsurePool(HostAction):
    pool: PoolConfig

    def target(self) -> str:
        return f"{self.pool.name} ({self.pool.path}) on {self.host}"
