"""Snapshot planning: create, revert and delete libvirt snapshots of a VM's domain."""
