import pytest
from pydantic import ValidationError

from specs.kinds import KINDS, UnknownKind, parse_resource, resolve_kind
from specs.meta import Resource, StatusBase
from specs.vm import VirtualMachine


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("VirtualMachine", "VirtualMachine"),
        ("virtualmachine", "VirtualMachine"),
        ("virtualmachines", "VirtualMachine"),
        ("vm", "VirtualMachine"),
        ("VMs", "VirtualMachine"),
        ("cluster", "Cluster"),
        ("clusters", "Cluster"),
        ("cl", "Cluster"),
        ("host", "Host"),
        ("hosts", "Host"),
        ("ho", "Host"),
        ("storagedomain", "StorageDomain"),
        ("sd", "StorageDomain"),
        ("net", "Network"),
        ("networks", "Network"),
        ("disks", "Disk"),
        ("vmpool", "VirtualMachinePool"),
        ("pool", "VirtualMachinePool"),
        ("virtualmachinepools", "VirtualMachinePool"),
        ("snap", "Snapshot"),
        ("snapshots", "Snapshot"),
        ("mig", "Migration"),
        ("migrations", "Migration"),
    ],
)
def test_resolve_kind(text: str, kind: str) -> None:
    assert resolve_kind(text).kind == kind


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [("virtualmachin", "VirtualMachine"), ("hots", "Host"), ("snapshto", "Snapshot"), ("zzz", None)],
)
def test_resolve_kind_unknown(text: str, suggestion: str | None) -> None:
    with pytest.raises(UnknownKind) as info:
        resolve_kind(text)
    assert info.value.suggestion == suggestion
    assert f"unknown kind {text!r}" in str(info.value)
    if suggestion:
        assert f"did you mean {suggestion}?" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_registry_shape() -> None:
    assert list(KINDS) == [
        "Cluster",
        "Host",
        "StorageDomain",
        "GlusterVolume",
        "Network",
        "Disk",
        "VirtualMachine",
        "VirtualMachinePool",
        "Snapshot",
        "Migration",
        "Role",
        "RoleBinding",
    ]
    for info in KINDS.values():
        assert issubclass(info.model, Resource) and issubclass(info.status_model, StatusBase)
        assert info.model.model_fields["kind"].annotation.__args__ == (info.kind,)  # type: ignore[union-attr]
        assert info.columns[0].header == "NAME"
        assert info.gitops is (info.kind != "Migration")
        for column in info.columns:
            root, *rest = column.path.split(".")
            assert root in ("metadata", "spec", "status") and rest, column


def _alias_owner() -> dict[str, str]:
    owners: dict[str, str] = {}
    for info in KINDS.values():
        for name in info.names:
            assert owners.setdefault(name, info.kind) == info.kind, f"{name} names two kinds"
    return owners


def test_aliases_unique() -> None:
    assert _alias_owner()["vms"] == "VirtualMachine"


def test_vm_columns() -> None:
    vm = KINDS["VirtualMachine"]
    narrow = [c.header for c in vm.columns if not c.wide_only]
    assert narrow == ["NAME", "CLUSTER", "HOST", "PHASE", "CPU", "MEMORY", "AGE"]
    assert {c.header: c.path for c in vm.columns}["HOST"] == "status.host"


VM = {
    "apiVersion": "virtplane.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "web-1"},
    "spec": {"cluster": "main", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}},
}


def test_parse_resource() -> None:
    resource = parse_resource(VM)
    assert isinstance(resource, VirtualMachine)
    assert resource.spec.memory.size_bytes == 2**30


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("VirtualMachin", "did you mean VirtualMachine?"),
        ("vm", "did you mean VirtualMachine?"),
        (None, "kind is required"),
    ],
)
def test_parse_resource_bad_kind(kind: str | None, message: str) -> None:
    data = {**VM, "kind": kind}
    with pytest.raises(ValidationError) as info:
        parse_resource(data)
    (error,) = info.value.errors()
    assert error["loc"] == ("kind",)
    assert message in error["msg"]
