"""API versions: an older document converts to the storage version before validation; unknown versions are
refused by validation; the framework chains steps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from specs.kinds import parse_resource
from specs.versions import CONVERSIONS, STORAGE_VERSION, Conversion
from specs.vm import VirtualMachine

OLD = {"apiVersion": "virtplane.io/v1beta1", "kind": "VirtualMachine", "metadata": {"name": "old"},
       "spec": {"cluster": "c", "cpu": 2, "memory": "2Gi"}}


def test_v1beta1_vm_becomes_v1() -> None:
    vm = parse_resource(OLD)
    assert isinstance(vm, VirtualMachine)
    assert vm.apiVersion == STORAGE_VERSION and vm.spec.cpu.cores == 2 and vm.spec.memory.size == "2Gi"
    assert OLD["spec"]["cpu"] == 2  # the input is not modified


def test_steps_chain_and_other_kinds_are_untouched() -> None:
    def rename(doc: dict) -> dict:  # type: ignore[type-arg]
        return {**doc, "spec": {**doc["spec"], "cpu": doc["spec"].pop("vcpus")}}

    chained = CONVERSIONS.with_(Conversion("VirtualMachine", "virtplane.io/v1alpha1", "virtplane.io/v1beta1", rename))
    older = {**OLD, "apiVersion": "virtplane.io/v1alpha1", "spec": {"cluster": "c", "vcpus": 3, "memory": "1Gi"}}
    up = chained.upgrade(older)
    assert up["apiVersion"] == STORAGE_VERSION and up["spec"]["cpu"] == {"cores": 3}
    assert "virtplane.io/v1alpha1" in chained.versions
    cluster = {"apiVersion": "virtplane.io/v1beta1", "kind": "Cluster", "metadata": {"name": "x"}, "spec": {}}
    assert chained.upgrade(cluster) == cluster


def test_a_version_nobody_converts_is_refused_by_validation() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource({**OLD, "apiVersion": "virtplane.io/v2"})
    assert "apiVersion" in str(info.value)
