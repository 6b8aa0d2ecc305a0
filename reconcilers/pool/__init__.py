"""VirtualMachinePool planning: the replica VMs and boot disks a pool should have."""
