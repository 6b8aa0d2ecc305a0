"""Cluster: a set of hosts sharing scheduling, migration, HA and power-saving policies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from specs.errors import field_error
from specs.meta import Resource, StatusBase, StrictModel


class BalancingPolicy(StrictModel):
    """Periodic load balancing by live migration."""

    enabled: bool = Field(default=True, description="Run the balancer for this cluster.")
    thresholdPercent: int = Field(
        default=20,
        ge=1,
        le=100,
        description="Migrate only when the most and least loaded hosts differ by more than this many "
        "percentage points of CPU or memory load.",
    )
    intervalSeconds: int = Field(
        default=60, ge=10, le=86400, description="How often the balancer looks at the cluster, in seconds."
    )
    maxMigrationsPerInterval: int = Field(
        default=2, ge=1, le=100, description="Upper bound on migrations the balancer starts per interval."
    )


class SchedulingPolicy(StrictModel):
    """Where new VMs go, and how much hosts may be overcommitted."""

    policy: Literal["EvenlyDistributed", "PowerSaving", "None"] = Field(
        default="EvenlyDistributed",
        description="EvenlyDistributed spreads load over all hosts; PowerSaving packs VMs onto few hosts so "
        "others can be powered off; None places VMs on the first fitting host and never balances.",
    )
    cpuOvercommit: float = Field(
        default=4.0,
        ge=1.0,
        le=64.0,
        description="Allowed ratio of VM vCPUs to host physical CPUs (1.0 = none).",
    )
    memoryOvercommit: float = Field(
        default=1.0,
        ge=1.0,
        le=4.0,
        description="Allowed ratio of VM memory to host memory (1.0 = none; >1 relies on ballooning/KSM).",
    )
    balancing: BalancingPolicy = Field(
        default_factory=BalancingPolicy, description="Periodic load balancing."
    )


class MigrationPolicy(StrictModel):
    """How live migrations run, so that they finish instead of running forever."""

    maxConcurrentPerHost: int = Field(
        default=2, ge=1, le=16, description="Migrations a host may send or receive at the same time."
    )
    maxDowntimeMs: int = Field(
        default=500, ge=1, le=60000, description="Longest pause of the guest allowed at switch-over, in ms."
    )
    autoConverge: bool = Field(
        default=True,
        description="Throttle the guest's vCPUs when memory is dirtied faster than it is copied.",
    )
    postCopy: bool = Field(
        default=False,
        description="Allow switching to post-copy (guest runs on the target, pages fetched on demand). "
        "Guarantees completion but a network failure during post-copy loses the guest.",
    )
    peerToPeer: bool = Field(
        default=True,
        description="The source host's libvirtd drives the migration and connects to the target Host's uri "
        "itself (that URI must work from the source host: qemu+tls, or qemu+ssh with keys between hosts). The "
        "switch-over then never waits for the controller, and a migration keeps going if the controller "
        "restarts. false: the controller relays between the two libvirtds (only it needs to reach the hosts).",
    )
    bandwidthMiBps: int | None = Field(
        default=None, ge=1, le=100000, description="Bandwidth cap per migration in MiB/s; unset = unlimited."
    )
    convergenceTimeoutSeconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="When a migration has not converged after this long, apply fallback.",
    )
    fallback: Literal["PostCopy", "Abort"] = Field(
        default="Abort",
        description="What to do when the timeout passes: PostCopy (needs postCopy: true) or Abort "
        "(the VM keeps running on the source).",
    )

    @model_validator(mode="after")
    def _fallback_needs_postcopy(self) -> MigrationPolicy:
        if self.fallback == "PostCopy" and not self.postCopy:
            raise field_error(
                "fallback", "fallback PostCopy requires postCopy: true (or use fallback: Abort)"
            )
        return self


class HaPolicy(StrictModel):
    """What happens to highly available VMs when their host dies."""

    hostGracePeriodSeconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long a host may be silent before it is NotResponding and gets fenced, in seconds.",
    )
    fencing: bool = Field(
        default=True,
        description="Fence (power off) NotResponding hosts before restarting their HA VMs elsewhere. When "
        "false, HA VMs of an unreachable host are never restarted automatically (a VM never runs twice).",
    )


class PowerSavingPolicy(StrictModel):
    """Powering idle hosts off and on again (used with scheduling.policy PowerSaving)."""

    spareHosts: int = Field(default=1, ge=0, le=1000, description="Empty hosts kept powered on as headroom.")
    lowUtilizationPercent: int = Field(
        default=20, ge=0, le=100, description="A host below this load is evacuated so it can be powered off."
    )
    highUtilizationPercent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="When every host is above this load, a powered-off host is started.",
    )
    idleMinutesBeforePowerOff: int = Field(
        default=10, ge=1, le=10080, description="Minutes a host must stay empty before it is powered off."
    )

    @model_validator(mode="after")
    def _ordered(self) -> PowerSavingPolicy:
        if self.lowUtilizationPercent >= self.highUtilizationPercent:
            raise field_error(
                "lowUtilizationPercent",
                f"lowUtilizationPercent ({self.lowUtilizationPercent}) must be below "
                f"highUtilizationPercent ({self.highUtilizationPercent})",
            )
        return self


class ClusterSpec(StrictModel):
    """Policies shared by every host and VM of the cluster."""

    description: str = Field(default="", max_length=1024, description="Free text shown in listings.")
    scheduling: SchedulingPolicy = Field(
        default_factory=SchedulingPolicy, description="Placement and balancing."
    )
    migration: MigrationPolicy = Field(default_factory=MigrationPolicy, description="Live migration limits.")
    ha: HaPolicy = Field(default_factory=HaPolicy, description="High-availability policy.")
    powerSaving: PowerSavingPolicy = Field(
        default_factory=PowerSavingPolicy, description="Settings for scheduling.policy PowerSaving."
    )


class Cluster(Resource):
    """A cluster of hosts (``kind: Cluster``)."""

    kind: Literal["Cluster"] = Field(description="Always Cluster.")
    spec: ClusterSpec = Field(default_factory=ClusterSpec, description="Cluster policies.")


class ClusterStatus(StatusBase):
    """Observed state of a cluster."""

    phase: Literal["Ready", "Degraded", "NoHosts"] | None = Field(
        default=None, description="Ready: every host Ready; Degraded: some are not; NoHosts: none."
    )
    hostsTotal: int = Field(default=0, ge=0, description="Hosts declared in this cluster.")
    hostsReady: int = Field(default=0, ge=0, description="Hosts currently Ready.")
    vmsRunning: int = Field(default=0, ge=0, description="VMs currently running in this cluster.")
    leader: str | None = Field(default=None, description="Controller replica holding this cluster's lease.")
    loadSpreadPercent: int | None = Field(
        default=None, ge=0, description="Load of the most loaded minus the least loaded Ready host, in points."
    )
