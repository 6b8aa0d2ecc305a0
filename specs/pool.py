"""VirtualMachinePool: N replicas of a VM template, each booting from its own clone of a base disk."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from specs.errors import field_error
from specs.meta import Labels, Name, Resource, StatusBase, StrictModel
from specs.vm import VmTemplateCommon


class PoolVmTemplateSpec(VmTemplateCommon):
    """VM spec of every replica. There is no disks list: each replica gets a clone of baseDisk."""

    diskBus: Literal["virtio", "scsi", "sata", "ide"] = Field(
        default="virtio", description="Bus of the cloned boot disk."
    )

    @model_validator(mode="after")
    def _no_fixed_mac(self) -> PoolVmTemplateSpec:
        for index, nic in enumerate(self.nics):
            if nic.mac is not None:
                raise field_error(
                    f"nics.{index}.mac", "a pool template cannot set mac: every replica would share it"
                )
        return self


class PoolTemplateMeta(StrictModel):
    """Labels and annotations given to every replica."""

    labels: Labels = Field(default_factory=dict, description="Labels of every replica VM.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of every replica VM.")


class PoolTemplate(StrictModel):
    """Template of the replicas."""

    metadata: PoolTemplateMeta = Field(default_factory=PoolTemplateMeta, description="Replica metadata.")
    spec: PoolVmTemplateSpec = Field(description="Replica VM spec (without cluster and disks).")


class VirtualMachinePoolSpec(StrictModel):
    """Desired state of a pool. Replicas are named <pool>-<index>, index from 0."""

    cluster: Name = Field(description="Cluster the replicas run in.")
    replicas: int = Field(ge=0, le=10000, description="Number of VMs (0-10000).")
    baseDisk: Name = Field(description="Disk cloned for each replica's boot disk (a template image).")
    cloneMode: Literal["overlay", "copy"] = Field(
        default="overlay", description="overlay: qcow2 overlays on baseDisk (instant); copy: full copies."
    )
    storageDomain: Name | None = Field(
        default=None, description="Where the clones go; default: the storage domain of baseDisk."
    )
    template: PoolTemplate = Field(description="What each replica looks like.")


class VirtualMachinePool(Resource):
    """A pool of identical VMs (``kind: VirtualMachinePool``)."""

    kind: Literal["VirtualMachinePool"] = Field(description="Always VirtualMachinePool.")
    spec: VirtualMachinePoolSpec = Field(description="Desired state of the pool.")


class VirtualMachinePoolStatus(StatusBase):
    """Observed state of a pool."""

    replicas: int = Field(default=0, ge=0, description="Replica VMs that exist.")
    readyReplicas: int = Field(default=0, ge=0, description="Replica VMs that are Running.")
