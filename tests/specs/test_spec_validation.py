"""Every validation rule, with the message the user reads and the field it points at."""

import copy
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from specs.errors import error_message, error_path, format_path
from specs.kinds import KINDS, parse_resource

DELETE = object()

BASE: dict[str, dict[str, Any]] = {
    "Cluster": {"spec": {}},
    "Host": {"spec": {"cluster": "main", "uri": "qemu+ssh://root@host1/system"}},
    "StorageDomain": {"spec": {"cluster": "main", "type": "posix", "posix": {"path": "/srv/shared"}}},
    "Network": {"spec": {"cluster": "main", "type": "bridge", "bridge": "br0"}},
    "Disk": {"spec": {"storageDomain": "shared", "size": "10Gi"}},
    "VirtualMachine": {
        "spec": {
            "cluster": "main",
            "cpu": {"cores": 2},
            "memory": {"size": "2Gi"},
            "disks": [{"disk": "root", "bootOrder": 1}, {"disk": "data"}],
            "nics": [{"name": "eth0", "network": "lan"}],
        }
    },
    "VirtualMachinePool": {
        "spec": {
            "cluster": "main",
            "replicas": 3,
            "baseDisk": "base",
            "template": {"spec": {"cpu": {"cores": 1}, "memory": {"size": "1Gi"}}},
        }
    },
    "Snapshot": {"spec": {"vm": "db-1"}},
    "Migration": {"spec": {"vm": "db-1"}},
}


def make(kind: str, **changes: Any) -> dict[str, Any]:
    """A valid document of ``kind`` with dotted-path changes (``spec__cpu__cores=3``; DELETE removes)."""
    doc = {
        "apiVersion": "virtplane.io/v1",
        "kind": kind,
        "metadata": {"name": "x"},
        **copy.deepcopy(BASE[kind]),
    }
    for dotted, value in changes.items():
        parts = [int(p) if p.isdigit() else p for p in dotted.split("__")]
        target: Any = doc
        for part in parts[:-1]:
            target = target.setdefault(part, {}) if isinstance(target, dict) else target[part]
        if value is DELETE:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return doc


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    model: type[BaseModel] = KINDS[doc["kind"]].model
    return [(format_path(error_path(e)), error_message(e, model)) for e in info.value.errors()]


@pytest.mark.parametrize("kind", list(BASE))
def test_base_documents_are_valid(kind: str) -> None:
    parse_resource(make(kind))


@pytest.mark.parametrize(
    ("kind", "changes", "field", "message"),
    [
        # metadata
        ("Disk", {"metadata__name": "Web_1"}, "metadata.name", "'Web_1' is not a DNS-1123 label"),
        ("Disk", {"metadata__name": "a" * 64}, "metadata.name", "at most 63 characters"),
        ("Disk", {"metadata__labels": {"-x": "y"}}, "metadata.labels", "label key '-x' is invalid"),
        ("Disk", {"apiVersion": "v1"}, "apiVersion", "Input should be 'virtplane.io/v1', got 'v1'"),
        ("Disk", {"metadata": DELETE}, "metadata", "required field is missing"),
        ("Disk", {"metadata__name": True}, "metadata.name", "got True (YAML reads yes/no/on/off"),
        ("Disk", {"metadata__labels": {"a": 1}}, "metadata.labels.a", "got 1 (YAML reads"),
        # Cluster
        (
            "Cluster",
            {"spec__scheduling": {"policy": "Spread"}},
            "spec.scheduling.policy",
            "'EvenlyDistributed'",
        ),
        (
            "Cluster",
            {"spec__scheduling": {"cpuOvercommit": 0.5}},
            "spec.scheduling.cpuOvercommit",
            "greater than or equal to 1, got 0.5",
        ),
        (
            "Cluster",
            {"spec__migration": {"fallback": "PostCopy"}},
            "spec.migration.fallback",
            "fallback PostCopy requires postCopy: true",
        ),
        (
            "Cluster",
            {"spec__migration": {"maxDowntimeMs": 0}},
            "spec.migration.maxDowntimeMs",
            "greater than or equal to 1, got 0",
        ),
        (
            "Cluster",
            {"spec__powerSaving": {"lowUtilizationPercent": 90}},
            "spec.powerSaving.lowUtilizationPercent",
            "must be below highUtilizationPercent (80)",
        ),
        (
            "Cluster",
            {"spec__ha": {"fencing": "maybe"}},
            "spec.ha.fencing",
            "valid boolean, unable to interpret input, got 'maybe'",
        ),
        # Host
        ("Host", {"spec__uri": "http://x"}, "spec.uri", "expected a libvirt URI like"),
        ("Host", {"spec__uri": "qemu+ssh://host1/foo"}, "spec.uri", "ends in /system or /session"),
        ("Host", {"spec__uri": "qemu+ssh:///system"}, "spec.uri", "needs a host name"),
        ("Host", {"spec__uri": "qemu+unix://h/system"}, "spec.uri", "qemu+unix URI is local"),
        # Hardening (issue 9): nothing in a URI may make libvirt run a program or parse a file as root.
        ("Host", {"spec__uri": "qemu+ssh://127.0.0.1/system?command=/tmp/x"}, "spec.uri", "'command' is not allowed"),
        ("Host", {"spec__uri": "qemu+ssh://h/system?netcat=/tmp/nc"}, "spec.uri", "'netcat' is not allowed"),
        ("Host", {"spec__uri": "qemu+ssh://h/system?comm%61nd=/tmp/x"}, "spec.uri", "'command' is not allowed"),
        ("Host", {"spec__uri": "qemu+ssh://h/system?mode=auto;command=x"}, "spec.uri", "expected letters"),
        ("Host", {"spec__uri": "qemu+ssh://-oProxyCommand=x/system"}, "spec.uri", "[user@]host[:port]"),
        ("Host", {"spec__uri": "qemu+tls://h/system?socket=/x"}, "spec.uri", "'socket' is not allowed"),
        ("Host", {"spec__uri": "qemu+ssh://h/system?keyfile=a/../b"}, "spec.uri", "absolute path"),
        ("Host", {"spec__uri": "qemu+ssh://h/system?keyfile=/a&keyfile=/b"}, "spec.uri", "given twice"),
        ("Host", {"spec__uri": "test:///etc/shadow"}, "spec.uri", "the only test URI is test:///default"),
        ("Host", {"spec__uri": "test://h/default"}, "spec.uri", "the only test URI is test:///default"),
        ("Host", {"spec__uri": "test:///default?file=/etc/shadow"}, "spec.uri", "only cpus=N and memory=GiB"),
        ("Host", {"spec__uri": "test:///default?cpus=x"}, "spec.uri", "positive whole number"),
        ("Host", {"spec__uri": "qemu:///system?socket=/tmp/s"}, "spec.uri", "'socket' is not allowed for qemu URIs"),
        ("Host", {"spec__cluster": DELETE}, "spec.cluster", "required field is missing"),
        ("Host", {"spec__migrationAddress": "not an address"}, "spec.migrationAddress", "host name or IP"),
        ("Host", {"spec__powerManagement": {"agent": "ipmi"}}, "spec.powerManagement.agent", "'ipmilan'"),
        (
            "Host",
            {"spec__powerManagement": {"agent": "ipmilan"}},
            "spec.powerManagement.address",
            "agent ipmilan needs address",
        ),
        (
            "Host",
            {"spec__powerManagement": {"agent": "redfish", "address": "10.0.0.1"}},
            "spec.powerManagement.username",
            "agent redfish needs username",
        ),
        (
            "Host",
            {"spec__powerManagement": {"agent": "lab", "address": "10.0.0.1"}},
            "spec.powerManagement.agent",
            "agent lab takes no address",
        ),
        (
            "Host",
            {"spec__reserved": {"memory": "2 gigs"}},
            "spec.reserved.memory",
            "expected a size like 512Mi",
        ),
        # StorageDomain
        ("StorageDomain", {"spec__type": "nfs"}, "spec.posix", "posix block given but type is nfs"),
        ("StorageDomain", {"spec__posix": DELETE}, "spec.type", "type posix needs a posix block (path)"),
        ("StorageDomain", {"spec__posix__path": "srv/x"}, "spec.posix.path", "expected an absolute path"),
        (
            "StorageDomain",
            {"spec__type": "nfs", "spec__posix": DELETE, "spec__nfs": {"server": "nas1"}},
            "spec.nfs.export",
            "required field is missing",
        ),
        (
            "StorageDomain",
            {
                "spec__type": "gluster",
                "spec__posix": DELETE,
                "spec__gluster": {"servers": [], "volume": "vms"},
            },
            "spec.gluster.servers",
            "at least 1 item",
        ),
        (
            "StorageDomain",
            {"spec__type": "local", "spec__posix": DELETE, "spec__local": {"path": "/var/lib/vp"}},
            "spec.hosts",
            "a local domain lives on one host",
        ),
        (
            "StorageDomain",
            {
                "spec__type": "local",
                "spec__posix": DELETE,
                "spec__local": {"path": "/x"},
                "spec__hosts": ["h1"],
                "spec__shared": True,
            },
            "spec.shared",
            "a local domain cannot be shared",
        ),
        ("StorageDomain", {"spec__hosts": ["h1", "h1"]}, "spec.hosts[1]", "host 'h1' is listed twice"),
        (
            "StorageDomain",
            {"spec__hosts": ["h1"], "spec__hostSelector": {"a": "b"}},
            "spec.hostSelector",
            "set hosts or hostSelector, not both",
        ),
        # Network
        ("Network", {"spec__bridge": DELETE}, "spec.bridge", "type bridge needs bridge"),
        ("Network", {"spec__vlan": 4095}, "spec.vlan", "less than or equal to 4094"),
        ("Network", {"spec__vlan": 10}, "spec.vlan", "vlan on a Linux bridge is not supported"),
        ("Network", {"spec__type": "nat", "spec__virtualport": "openvswitch"}, "spec.virtualport",
         "virtualport applies to type bridge only"),
        ("Network", {"spec__vlan": 0}, "spec.vlan", "greater than or equal to 1"),
        ("Network", {"spec__mtu": 67}, "spec.mtu", "greater than or equal to 68"),
        ("Network", {"spec__mtu": 70000}, "spec.mtu", "less than or equal to 65535"),
        (
            "Network",
            {"spec__bridge": "a-very-long-bridge-name"},
            "spec.bridge",
            "Linux interface name of 1-15",
        ),
        ("Network", {"spec__type": "nat", "spec__bridge": DELETE}, "spec.ipv4", "type nat needs ipv4"),
        ("Network", {"spec__type": "nat", "spec__vlan": 5}, "spec.vlan", "vlan applies to type bridge only"),
        ("Network", {"spec__ipv4": {"cidr": "10.0.0.0/24"}}, "spec.ipv4", "ipv4 applies to nat and isolated"),
        (
            "Network",
            {"spec__type": "nat", "spec__ipv4": {"cidr": "10.0.0.1/24"}},
            "spec.ipv4.cidr",
            "expected an IPv4 network like 192.168.100.0/24",
        ),
        (
            "Network",
            {
                "spec__type": "nat",
                "spec__ipv4": {"cidr": "10.0.0.0/24", "dhcp": {"start": "10.0.1.5", "end": "10.0.0.9"}},
            },
            "spec.ipv4.dhcp.start",
            "dhcp start 10.0.1.5 is outside 10.0.0.0/24",
        ),
        (
            "Network",
            {
                "spec__type": "nat",
                "spec__ipv4": {"cidr": "10.0.0.0/24", "dhcp": {"start": "10.0.0.9", "end": "10.0.0.5"}},
            },
            "spec.ipv4.dhcp.end",
            "dhcp end 10.0.0.5 is before start 10.0.0.9",
        ),
        (
            "Network",
            {"spec__type": "nat", "spec__ipv4": {"cidr": "10.0.0.0/24", "gateway": "10.9.0.1"}},
            "spec.ipv4.gateway",
            "outside 10.0.0.0/24",
        ),
        (
            "Network",
            {"spec__type": "user", "spec__bridge": DELETE, "spec__mtu": 1500},
            "spec.type",
            "no bridge or mtu",
        ),
        # Disk
        (
            "Disk",
            {"spec__size": "big"},
            "spec.size",
            "expected a size like 512Mi, 20Gi, 1G or a plain number",
        ),
        ("Disk", {"spec__size": DELETE}, "spec.size", "an empty disk needs size"),
        ("Disk", {"spec__size": 0}, "spec.size", "size must be greater than 0"),
        ("Disk", {"spec__storageDomain": DELETE}, "spec.storageDomain", "required field is missing"),
        ("Disk", {"spec__format": "vmdk"}, "spec.format", "Input should be 'qcow2' or 'raw', got 'vmdk'"),
        (
            "Disk",
            {"spec__source": {"empty": {}, "clone": {"disk": "base"}}},
            "spec.source",
            "set exactly one of empty, clone, import, snapshot (got empty, clone)",
        ),
        (
            "Disk",
            {"spec__source": {}},
            "spec.source",
            "set exactly one of empty, clone, import, snapshot (got none)",
        ),
        (
            "Disk",
            {"spec__source": {"clone": {"disk": "a", "image": "b.qcow2"}}},
            "spec.source.clone.disk",
            "clone needs exactly one of disk (a Disk name) or image",
        ),
        (
            "Disk",
            {"spec__source": {"clone": {"disk": "a", "mode": "link"}}},
            "spec.source.clone.mode",
            "'overlay'",
        ),
        (
            "Disk",
            {"spec__source": {"clone": {"disk": "a"}}, "spec__format": "raw"},
            "spec.format",
            "a clone with mode overlay is qcow2",
        ),
        (
            "Disk",
            {"spec__source": {"import": {"path": "x.vmdk", "format": "iso"}}},
            "spec.source.import.format",
            "'vmdk'",
        ),
        (
            "Disk",
            {"spec__source": {"snapshot": {"snapshot": "s1"}}},
            "spec.source.snapshot.disk",
            "required field",
        ),
        ("Disk", {"spec__shareable": True}, "spec.format", "a shareable disk must be format raw"),
        ("Disk", {"spec__reclaimPolicy": "Keep"}, "spec.reclaimPolicy", "'Delete' or 'Retain'"),
        (
            "Disk",
            {"spec__lun": {"blockPath": "/dev/sdb"}},
            "spec.storageDomain",
            "a lun disk has no storageDomain",
        ),
        (
            "Disk",
            {"spec__storageDomain": DELETE, "spec__size": DELETE, "spec__lun": {}},
            "spec.lun",
            "lun needs exactly one of iscsi or blockPath",
        ),
        (
            "Disk",
            {
                "spec__storageDomain": DELETE,
                "spec__size": DELETE,
                "spec__lun": {"blockPath": "/dev/sdb"},
                "spec__reclaimPolicy": "Delete",
            },
            "spec.reclaimPolicy",
            "a lun is never deleted",
        ),
        (
            "Disk",
            {
                "spec__storageDomain": DELETE,
                "spec__size": DELETE,
                "spec__lun": {"iscsi": {"portal": "10.0.0.1:3260", "iqn": "target1"}},
            },
            "spec.lun.iscsi.iqn",
            "String should match pattern",
        ),
        # VirtualMachine
        (
            "VirtualMachine",
            {"spec__runStrategy": "Sometimes"},
            "spec.runStrategy",
            "'Always', 'RerunOnFailure'",
        ),
        ("VirtualMachine", {"spec__cpu__cores": 0}, "spec.cpu.cores", "greater than or equal to 1"),
        ("VirtualMachine", {"spec__cpu__cores": "two"}, "spec.cpu.cores", "valid integer"),
        (
            "VirtualMachine",
            {"spec__cpu__maxCores": 1},
            "spec.cpu.maxCores",
            "maxCores (1) must be >= cores (2)",
        ),
        ("VirtualMachine", {"spec__memory__size": "lots"}, "spec.memory.size", "got 'lots'"),
        ("VirtualMachine", {"spec__memory__size": "512k"}, "spec.memory.size", "at least 1Mi"),
        (
            "VirtualMachine",
            {"spec__memory__maxSize": "1Gi"},
            "spec.memory.maxSize",
            "maxSize (1Gi) must be >= size (2Gi)",
        ),
        ("VirtualMachine", {"spec__memory": DELETE}, "spec.memory", "required field is missing"),
        (
            "VirtualMachine",
            {"spec__memroy": {}},
            "spec.memroy",
            "unknown field 'memroy' (did you mean 'memory'?)",
        ),
        (
            "VirtualMachine",
            {"spec__disks__1__bus": "usb"},
            "spec.disks[1].bus",
            "'virtio', 'scsi', 'sata', 'ide' or 'fdc'",
        ),
        (
            "VirtualMachine",
            {"spec__disks__1__bootOrder": 0},
            "spec.disks[1].bootOrder",
            "greater than or equal to 1",
        ),
        (
            "VirtualMachine",
            {"spec__disks__1__bootOrder": 1},
            "spec.disks[1].bootOrder",
            "bootOrder 1 is used twice (also disks[0]); boot orders must be unique",
        ),
        (
            "VirtualMachine",
            {"spec__disks__1__disk": "root"},
            "spec.disks[1].disk",
            "disk 'root' is attached twice (also disks[0])",
        ),
        (
            "VirtualMachine",
            {"spec__nics": [{"name": "eth0", "network": "a"}, {"name": "eth0", "network": "b"}]},
            "spec.nics[1].name",
            "nic name 'eth0' is used twice",
        ),
        (
            "VirtualMachine",
            {
                "spec__nics": [
                    {"name": "a", "network": "n", "mac": "52:54:00:00:00:01"},
                    {"name": "b", "network": "n", "mac": "52:54:00:00:00:01"},
                ]
            },
            "spec.nics[1].mac",
            "MAC 52:54:00:00:00:01 is used twice",
        ),
        (
            "VirtualMachine",
            {"spec__nics__0__mac": "52:54:00:00:00"},
            "spec.nics[0].mac",
            "expected a MAC address like",
        ),
        ("VirtualMachine", {"spec__nics__0__mac": "01:00:5e:00:00:01"}, "spec.nics[0].mac", "multicast MAC"),
        (
            "VirtualMachine",
            {"spec__nics__0__model": "ne2k"},
            "spec.nics[0].model",
            "'virtio', 'e1000' or 'rtl8139'",
        ),
        ("VirtualMachine", {"spec__nics__0__name": "Eth0"}, "spec.nics[0].name", "not a DNS-1123 label"),
        (
            "VirtualMachine",
            {"spec__placement": {"affinityGroup": "g", "antiAffinityGroup": "g"}},
            "spec.placement.antiAffinityGroup",
            "affinityGroup and antiAffinityGroup must differ",
        ),
        (
            "VirtualMachine",
            {"spec__placement": {"allowedHosts": ["a", "a"]}},
            "spec.placement.allowedHosts",
            "twice",
        ),
        (
            "VirtualMachine",
            {"spec__highAvailability": {"enabled": True, "priority": 101}},
            "spec.highAvailability.priority",
            "less than or equal to 100",
        ),
        ("VirtualMachine", {"spec__updatePolicy": "Always"}, "spec.updatePolicy", "'Manual' or 'Auto'"),
        ("VirtualMachine", {"spec__boot": {"firmware": "efi"}}, "spec.boot.firmware", "'bios' or 'uefi'"),
        (
            "VirtualMachine",
            {"spec__boot": {"initrd": "/boot/initrd"}},
            "spec.boot.kernel",
            "initrd is set, so kernel is required",
        ),
        (
            "VirtualMachine",
            {"spec__boot": {"cmdline": "console=ttyS0"}},
            "spec.boot.kernel",
            "cmdline is set",
        ),
        ("VirtualMachine", {"spec__machine": "q35 pc"}, "spec.machine", "String should match pattern"),
        # VirtualMachinePool
        ("VirtualMachinePool", {"spec__replicas": 10001}, "spec.replicas", "less than or equal to 10000"),
        ("VirtualMachinePool", {"spec__replicas": -1}, "spec.replicas", "greater than or equal to 0"),
        ("VirtualMachinePool", {"spec__cloneMode": "link"}, "spec.cloneMode", "'overlay' or 'copy'"),
        (
            "VirtualMachinePool",
            {"spec__template__spec__disks": []},
            "spec.template.spec.disks",
            "unknown field 'disks'",
        ),
        (
            "VirtualMachinePool",
            {"spec__template__spec__nics": [{"name": "a", "network": "n", "mac": "52:54:00:00:00:01"}]},
            "spec.template.spec.nics[0].mac",
            "a pool template cannot set mac",
        ),
        (
            "VirtualMachinePool",
            {"spec__template__spec__cpu__maxCores": 0},
            "spec.template.spec.cpu.maxCores",
            "greater than or equal to 1",
        ),
        # Snapshot
        ("Snapshot", {"spec__disks": []}, "spec.disks", "disks is empty"),
        ("Snapshot", {"spec__disks": ["a", "a"]}, "spec.disks[1]", "disk 'a' is listed twice"),
        (
            "Snapshot",
            {"spec__disks": ["a"], "spec__memory": True},
            "spec.disks",
            "a snapshot with memory covers every disk",
        ),
        ("Snapshot", {"spec__description": "x" * 1025}, "spec.description", "at most 1024 characters"),
        # Migration
        ("Migration", {"spec__ttlSeconds": 5}, "spec.ttlSeconds", "greater than or equal to 60"),
        ("Migration", {"spec__targetHost": "Host 2"}, "spec.targetHost", "not a DNS-1123 label"),
        ("Migration", {"spec__vm": DELETE}, "spec.vm", "required field is missing"),
    ],
)
def test_rule(kind: str, changes: dict[str, Any], field: str, message: str) -> None:
    errors = errors_of(make(kind, **changes))
    assert any(path == field and message in text for path, text in errors), errors


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("Cluster", {"spec__migration": {"postCopy": True, "fallback": "PostCopy"}}),
        ("Host", {"spec__uri": "qemu:///system"}),
        ("Host", {"spec__uri": "qemu+unix:///system?socket=/run/lab/h1/libvirt-sock"}),
        ("Host", {"spec__uri": "qemu+tls://host1.example.com/system"}),
        ("Host", {"spec__uri": "test:///default"}),
        ("Host", {"spec__uri": "test:///default?cpus=16&memory=64"}),
        ("Host", {"spec__uri": "qemu+ssh://root@host1:2222/system?keyfile=/etc/virtplane/keys/id&no_tty=1"}),
        ("Host", {"spec__uri": "qemu+tls://[fd00::5]/system?pkipath=/etc/virtplane/pki/h1"}),
        ("Host", {"spec__powerManagement": {"agent": "lab"}, "spec__migrationAddress": "fd00::5"}),
        (
            "StorageDomain",
            {"spec__type": "nfs", "spec__posix": DELETE, "spec__nfs": {"server": "nas1", "export": "/e"}},
        ),
        (
            "StorageDomain",
            {
                "spec__type": "local",
                "spec__posix": DELETE,
                "spec__local": {"path": "/x"},
                "spec__hosts": ["h"],
            },
        ),
        ("Network", {"spec__type": "user", "spec__bridge": DELETE}),
        ("Disk", {"spec__size": 1073741824}),
        (
            "Disk",
            {
                "spec__size": DELETE,
                "spec__source": {"clone": {"image": "templates/debian.qcow2", "mode": "copy"}},
            },
        ),
        ("Disk", {"spec__size": DELETE, "spec__source": {"snapshot": {"snapshot": "s1", "disk": "root"}}}),
        ("Disk", {"spec__format": "raw", "spec__shareable": True}),
        (
            "Disk",
            {
                "spec__storageDomain": DELETE,
                "spec__size": DELETE,
                "spec__lun": {"blockPath": "/dev/sdb"},
                "spec__shareable": True,
            },
        ),
        ("VirtualMachine", {"spec__boot": {"kernel": "/k", "initrd": "/i", "cmdline": "console=ttyS0"}}),
        ("VirtualMachine", {"spec__memory__size": 2147483648, "spec__memory__maxSize": "4Gi"}),
        ("Snapshot", {"spec__memory": True}),
    ],
)
def test_valid_variants(kind: str, changes: dict[str, Any]) -> None:
    parse_resource(make(kind, **changes))


def test_quantities_keep_the_users_spelling() -> None:
    vm = parse_resource(make("VirtualMachine", spec__memory={"size": "1024Mi", "maxSize": 4294967296}))
    dumped = vm.model_dump(mode="json")
    assert dumped["spec"]["memory"] == {"size": "1024Mi", "maxSize": 4294967296, "dimmSlots": None, "dimmMaxSize": None}
    assert vm.spec.memory.size_bytes == 2**30
    assert vm.spec.memory.max_size_bytes == 2**32


@pytest.mark.parametrize("kind", list(BASE))
def test_dump_round_trip(kind: str) -> None:
    resource = parse_resource(make(kind))
    assert parse_resource(resource.model_dump(mode="json")) == resource
    assert parse_resource(resource.model_dump(mode="json", exclude_defaults=True)) == resource
    assert parse_resource(resource.model_dump(mode="json", exclude_none=True)) == resource


def test_disk_source_dumps_under_its_yaml_name() -> None:
    disk = parse_resource(make("Disk", spec__source={"import": {"path": "a.vmdk", "format": "vmdk"}}))
    dumped = disk.model_dump(mode="json", exclude_none=True)
    assert dumped["spec"]["source"] == {"import": {"path": "a.vmdk", "format": "vmdk"}}
    assert parse_resource(dumped) == disk


def test_models_are_frozen() -> None:
    vm = parse_resource(make("VirtualMachine"))
    with pytest.raises(ValidationError):
        vm.spec.cpu.cores = 3


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for info in model.model_fields.values():
        for arg in _walk(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _models(arg, seen)


def _walk(annotation: Any) -> list[Any]:
    import typing

    out = [annotation]
    for arg in typing.get_args(annotation):
        out += _walk(arg)
    return out


def test_every_field_is_described() -> None:
    seen: set[type[BaseModel]] = set()
    for info in KINDS.values():
        _models(info.model, seen)
        _models(info.status_model, seen)
    missing = [
        f"{m.__name__}.{name}" for m in seen for name, f in m.model_fields.items() if not f.description
    ]
    assert not missing, f"fields without description: {missing}"
    assert len(seen) > 40
