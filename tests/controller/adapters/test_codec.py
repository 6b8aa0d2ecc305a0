"""Codec: render/parse round trips (pure and through libvirt's test driver) and byte-exact golden files.

Regenerate the golden files with ``VIRTPLANE_UPDATE_GOLDEN=1 pytest tests/controller/adapters/test_codec.py``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.adapters.libvirt.codec import (
    CodecError,
    parse_domain,
    parse_network,
    parse_pool,
    parse_volume,
    render_disk_device,
    render_domain,
    render_iscsi_secret,
    render_network,
    render_nic_device,
    render_pool,
    render_test_host,
    render_volume,
)
from reconcilers.domain import (
    DEFAULT_FEATURES,
    BlockSource,
    CorrelationId,
    CpuFeature,
    CpuTopology,
    DirPoolConfig,
    DiskDevice,
    DomainConfig,
    DomainName,
    DomainUUID,
    FileSource,
    Ipv4Config,
    KernelBoot,
    MacAddress,
    MachineType,
    MemoryHotplug,
    NetfsPoolConfig,
    NetworkConfig,
    NetworkName,
    NetworkSource,
    NicDevice,
    NicSourceKind,
    OwnerMetadata,
    OwnerUID,
    PoolName,
    SerialConsole,
    VolumeConfig,
    VolumeName,
)
from reconcilers.vm.domain import config_differences

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("VIRTPLANE_UPDATE_GOLDEN") == "1"

# ---------------------------------------------------------------- strategies

_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda s: s[0] != "-" and s[-1] != "-"
)
_path = st.builds(lambda a, b: f"/var/lib/virtplane/{a}/{b}.img", _word, _word)
_mac = st.integers(0, 0xFFFFFF).map(
    lambda n: MacAddress("52:54:00:" + ":".join(f"{b:02x}" for b in n.to_bytes(3)))
)
_uuid = st.uuids().map(lambda u: DomainUUID(str(u)))
_owner = st.builds(
    OwnerMetadata,
    uid=st.uuids().map(lambda u: OwnerUID(str(u))),
    kind=st.sampled_from(["VirtualMachine", "VirtualMachinePool"]),
    name=_word,
    generation=st.integers(0, 2**40),
    correlation_id=_word.map(CorrelationId),
)
_source = st.one_of(
    st.builds(FileSource, path=_path),
    st.builds(BlockSource, dev=_word.map(lambda w: f"/dev/disk/by-id/{w}")),
    st.builds(
        NetworkSource,
        protocol=st.sampled_from(["nfs", "gluster"]),
        host=st.sampled_from(["127.0.0.1", "nfs1.example.org"]),
        name=st.builds(lambda a, b: f"{a}/{b}.qcow2", _word, _word),
        port=st.none() | st.integers(1, 65535),
    ),
)


@st.composite
def _disks(draw: st.DrawFn) -> tuple[DiskDevice, ...]:
    n = draw(st.integers(0, 4))
    drives = draw(st.integers(0, 2))
    boots = draw(st.permutations(range(1, n + drives + 1)))
    disks = tuple(
        DiskDevice(
            target=f"vd{chr(ord('a') + i)}",
            source=draw(_source),
            bus="virtio",
            format=draw(st.sampled_from(["qcow2", "raw"])),
            boot_order=draw(st.none() | st.just(boots[i])),
            readonly=draw(st.booleans()),
            shareable=draw(st.booleans()),
            serial=draw(st.none() | _word),
            cache=draw(st.sampled_from([None, "none", "writeback", "directsync"])),
            discard=draw(st.sampled_from([None, "unmap", "ignore"])),
            io=draw(st.sampled_from([None, "native", "threads"])),
        )
        for i in range(n)
    )
    return disks + tuple(
        DiskDevice(
            target=f"sd{chr(ord('a') + i)}",
            source=draw(st.none() | st.builds(FileSource, path=_path)),
            bus="sata",
            format="raw",
            boot_order=draw(st.none() | st.just(boots[n + i])),
            readonly=True,
            device="cdrom",
        )
        for i in range(drives)
    )


@st.composite
def _nics(draw: st.DrawFn) -> tuple[NicDevice, ...]:
    n = draw(st.integers(0, 3))
    out = []
    for i in range(n):
        kind: NicSourceKind = draw(st.sampled_from(["network", "bridge", "user"]))
        out.append(
            NicDevice(
                name=f"nic{i}",
                source_kind=kind,
                source_name=None if kind == "user" else draw(_word),
                mac=draw(st.none() | _mac),
                model=draw(st.sampled_from(["virtio", "e1000", "e1000e", "rtl8139"])),
                boot_order=draw(st.none() | st.integers(10 + i * 10, 10 + i * 10)),
            )
        )
    return tuple(out)


@st.composite
def domain_configs(draw: st.DrawFn) -> DomainConfig:
    max_vcpus = draw(st.integers(1, 64))
    max_mem = draw(st.integers(1, 2**26))
    machine: MachineType = draw(st.sampled_from(["pc", "q35"]))
    cpu_model = draw(st.sampled_from([None, "host-model", "host-passthrough", "Skylake-Client"]))
    return DomainConfig(
        name=DomainName(draw(_word)),
        uuid=draw(st.none() | _uuid),
        vcpus=draw(st.integers(1, max_vcpus)),
        max_vcpus=max_vcpus,
        memory_kib=draw(st.integers(1, max_mem)),
        max_memory_kib=max_mem,
        domain_type=draw(st.sampled_from(["kvm", "qemu"])),
        machine=machine,
        cpu_model=cpu_model,
        firmware=draw(st.sampled_from(["bios", "uefi"])),
        kernel_boot=draw(
            st.none()
            | st.builds(
                KernelBoot,
                kernel=_path,
                initrd=st.none() | _path,
                cmdline=st.sampled_from([None, "console=ttyS0", "console=ttyS0 root=/dev/vda quiet"]),
            )
        ),
        disks=draw(_disks()),
        nics=draw(_nics()),
        serial=draw(st.none() | st.builds(SerialConsole, path=st.none() | _path)),
        spare_root_ports=draw(st.integers(0, 8)) if machine == "q35" else 0,
        owner=draw(st.none() | _owner),
        cpu_topology=draw(st.none() | st.just(CpuTopology(sockets=max_vcpus, cores=1, threads=1))),
        cpu_features=draw(st.sampled_from([(), (CpuFeature("pcid"),), (CpuFeature("hle", "disable"),)]))
        if cpu_model is not None else (),
        memory_hotplug=draw(st.none() | st.just(MemoryHotplug(slots=4, max_kib=max_mem * 2))),
        features=draw(st.sampled_from([DEFAULT_FEATURES, (), ("<acpi />", "<apic />", '<vmport state="off" />')])),
        extra_elements=draw(st.sampled_from([(), ('<clock offset="localtime" />',)])),
        extra_devices=draw(st.sampled_from([(), ('<graphics autoport="yes" type="vnc" />',
                                                 '<video><model type="vga" /></video>')])),
    )


# ---------------------------------------------------------------- round trips


@settings(database=None)
@given(domain_configs())
def test_parse_of_render_is_identity(config: DomainConfig) -> None:
    parsed, owner = parse_domain(render_domain(config))
    assert parsed == config
    assert owner == config.owner


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    c = libvirt.open("test:///default")
    yield c
    c.close()


def _with_libvirt_fills(config: DomainConfig, observed: DomainConfig) -> DomainConfig:
    """What a caller does: keep the values libvirt generated (UUID, MACs) in status, send them next time."""
    nics = tuple(
        dataclasses.replace(n, mac=n.mac or o.mac) for n, o in zip(config.nics, observed.nics, strict=True)
    )
    return dataclasses.replace(config, uuid=config.uuid or observed.uuid, nics=nics)


@settings(max_examples=60, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(domain_configs())
def test_libvirt_defined_xml_parses_back_equal(conn: libvirt.virConnect, config: DomainConfig) -> None:
    config = dataclasses.replace(config, name=DomainName(f"rt-{uuid.uuid4().hex[:12]}"), uuid=None)
    dom = conn.defineXML(render_domain(config))
    try:
        inactive, _ = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert inactive.uuid == dom.UUIDString()
        assert all(n.mac for n in inactive.nics), "libvirt fills every MAC; the parser must return it"
        kept = _with_libvirt_fills(config, inactive)
        # Verbatim parts come back with libvirt's defaults filled in: covered, so no drift for the planner.
        assert config_differences(kept, inactive) == ()
        assert inactive == dataclasses.replace(kept, extra_devices=inactive.extra_devices)
        kept = inactive
        # Defining again with the kept values changes nothing: re-planning is quiet.
        conn.defineXML(render_domain(kept))
        again, _ = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert again == kept
        dom.create()
        live, _ = parse_domain(dom.XMLDesc(0))
        assert live == kept
        dom.destroy()
    finally:
        dom.undefine()


def test_foreign_domain_has_no_owner_and_unrepresentable_ones_fail_loudly(conn: libvirt.virConnect) -> None:
    foreign = dataclasses.replace(_minimal_config(), name=DomainName("foreign-1"))
    dom = conn.defineXML(render_domain(foreign))
    try:
        config, owner = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert owner is None and config.owner is None and config.name == "foreign-1"
    finally:
        dom.undefine()
    # test:///default ships a domain "test" of type 'test' without a machine: not something we can manage.
    with pytest.raises(CodecError):
        parse_domain(conn.lookupByName("test").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_machine_versions_from_qemu_normalize_and_unknown_content_is_rejected() -> None:
    xml = render_domain(_full_config()).replace("machine='q35'", "machine='pc-q35-7.2'")
    xml = xml.replace('machine="q35"', 'machine="pc-q35-7.2"')
    assert parse_domain(xml)[0].machine == "q35"
    with pytest.raises(CodecError, match="machine type"):
        parse_domain(xml.replace('"pc-q35-7.2"', '"virt"'))
    with pytest.raises(CodecError, match="domain type"):
        parse_domain(xml.replace('type="kvm"', 'type="xen"'))
    with pytest.raises(CodecError, match="well-formed"):
        parse_domain("<domain")


def test_spare_root_ports_count_only_free_ports() -> None:
    xml = """<domain type='kvm'><name>x</name><memory>1024</memory><vcpu>1</vcpu>
      <os><type machine='pc-q35-7.2'>hvm</type></os><devices>
      <disk type='file' device='disk'><driver type='qcow2'/><source file='/a'/>
        <target dev='vda' bus='virtio'/><address type='pci' bus='0x01' slot='0x00'/></disk>
      <disk type='file' device='cdrom'><source file='/iso'/><target dev='sda' bus='sata'/></disk>
      <controller type='pci' index='0' model='pcie-root'/>
      <controller type='pci' index='1' model='pcie-root-port'>
        <address type='pci' bus='0x00' slot='0x02'/></controller>
      <controller type='pci' index='2' model='pcie-root-port'>
        <address type='pci' bus='0x00' slot='0x03'/></controller>
      <controller type='pci' index='3' model='pcie-root-port'>
        <address type='pci' bus='0x00' slot='0x04'/></controller>
      <memballoon model='virtio'/><graphics type='vnc'/></devices></domain>"""
    config, owner = parse_domain(xml)
    assert config.spare_root_ports == 2  # port 1 holds vda
    assert [(d.target, d.device) for d in config.disks] == [("vda", "disk"), ("sda", "cdrom")]
    assert config.extra_devices == ('<graphics type="vnc" />',)  # the balloon is libvirt's default
    assert owner is None


# ---------------------------------------------------------------- pools, volumes, networks


def test_pool_volume_network_round_trip_through_libvirt(conn: libvirt.virConnect, tmp_path: Path) -> None:
    pool_cfg = DirPoolConfig(name=PoolName("rt-pool"), path=str(tmp_path))
    pool = conn.storagePoolDefineXML(render_pool(pool_cfg))
    try:
        assert parse_pool(pool.XMLDesc(0)) == pool_cfg
        pool.create()
        vol_cfg = VolumeConfig(name=VolumeName("d1.qcow2"), capacity_bytes=10 * 2**30, format="qcow2")
        vol = pool.createXML(render_volume(vol_cfg))
        observed = parse_volume(vol.XMLDesc(0))
        assert (observed.name, observed.capacity_bytes) == ("d1.qcow2", 10 * 2**30)
        assert observed.path == vol.path()
        vol.delete()
        pool.destroy()
    finally:
        pool.undefine()
    net_cfg = NetworkConfig(
        name=NetworkName("rt-net"),
        forward="nat",
        bridge="vpbr9",
        mtu=9000,
        ipv4=Ipv4Config(address="192.168.150.1/24", dhcp_start="192.168.150.10", dhcp_end="192.168.150.99"),
    )
    net = conn.networkDefineXML(render_network(net_cfg))
    try:
        assert parse_network(net.XMLDesc(0)) == net_cfg
    finally:
        net.undefine()
    isolated = NetworkConfig(name=NetworkName("rt-iso"), forward="none", bridge="vpbr8")
    assert parse_network(render_network(isolated)) == isolated


def test_volume_with_backing_store_renders_and_parses() -> None:
    vol = VolumeConfig(
        VolumeName("c.qcow2"), 2**30, "qcow2", backing_path="/s/base.qcow2", backing_format="qcow2"
    )
    observed = parse_volume(render_volume(vol))
    assert (observed.backing_path, observed.backing_format, observed.format) == (
        "/s/base.qcow2",
        "qcow2",
        "qcow2",
    )


# ---------------------------------------------------------------- golden files


def _full_config() -> DomainConfig:
    return DomainConfig(
        name=DomainName("web-1"),
        uuid=DomainUUID("4b2d7c0e-6f55-4d1e-9a51-5b0f3f0c8e11"),
        vcpus=2,
        max_vcpus=8,
        memory_kib=1048576,
        max_memory_kib=4194304,
        domain_type="kvm",
        machine="q35",
        cpu_model="host-model",
        firmware="uefi",
        kernel_boot=KernelBoot("/boot/vmlinuz", "/boot/initrd.img", "console=ttyS0"),
        disks=(
            DiskDevice("vda", FileSource("/srv/posix/web-1-root.qcow2"), boot_order=1, serial="root"),
            DiskDevice("vdb", NetworkSource("nfs", "127.0.0.1", "/export/web-1-data.qcow2")),
            DiskDevice("vdc", NetworkSource("gluster", "gl1", "vol0/web.raw", 24007), format="raw"),
            DiskDevice("vdd", BlockSource("/dev/sdb"), format="raw", shareable=True, readonly=True),
            DiskDevice("vde", NetworkSource("iscsi", "10.0.0.20", "iqn.2024-01.com.example:t1/1", 3260, "vplab",
                                            "virtplane-chap-t1"), format="raw"),
        ),
        nics=(
            NicDevice("frontend", "network", "default", MacAddress("52:54:00:12:34:56")),
            NicDevice("storage", "bridge", "br0", model="e1000e"),
            NicDevice("lab", "user"),
            NicDevice("tenant", "bridge", "ovs-tenants", virtualport="openvswitch", vlan=210),
        ),
        serial=SerialConsole("/var/log/virtplane/web-1.log"),
        spare_root_ports=4,
        owner=OwnerMetadata(OwnerUID("9d0b"), "VirtualMachine", "web-1", 7, CorrelationId("c-42")),
    )


def _minimal_config() -> DomainConfig:
    return DomainConfig(DomainName("tiny"), None, 1, 1, 131072, 131072, domain_type="qemu", machine="pc")


GOLDEN_CASES = {
    "domain-full.xml": lambda: render_domain(_full_config()),
    "domain-minimal.xml": lambda: render_domain(_minimal_config()),
    "disk-network.xml": lambda: render_disk_device(_full_config().disks[1]),
    "nic-bridge.xml": lambda: render_nic_device(_full_config().nics[1]),
    "pool-dir.xml": lambda: render_pool(DirPoolConfig(PoolName("posix1"), "/srv/posix")),
    "pool-netfs-gluster.xml": lambda: render_pool(
        NetfsPoolConfig(PoolName("vp-gl"), "/var/lib/virtplane/mnt/gl", "gl1", "/vm0", "glusterfs")
    ),
    "pool-netfs-nfs.xml": lambda: render_pool(
        NetfsPoolConfig(PoolName("vp-nas"), "/srv/vms", "nas1", "/export/vms", "nfs", "4", ("noatime", "soft"))
    ),
    "disk-iscsi-chap.xml": lambda: render_disk_device(_full_config().disks[4]),
    "nic-ovs-vlan.xml": lambda: render_nic_device(_full_config().nics[3]),
    "secret-iscsi.xml": lambda: render_iscsi_secret("virtplane-chap-t1", "virtplane: CHAP password t1"),
    "volume-overlay.xml": lambda: render_volume(
        VolumeConfig(
            VolumeName("web.qcow2"), 20 * 2**30, backing_path="/srv/base.qcow2", backing_format="qcow2"
        )
    ),
    "network-nat.xml": lambda: render_network(
        NetworkConfig(
            NetworkName("prod"),
            "nat",
            "virbr10",
            1500,
            Ipv4Config("10.10.0.1/24", "10.10.0.2", "10.10.0.254"),
        )
    ),
    "test-host.xml": lambda: render_test_host(cpus=32, memory_kib=128 * 2**20),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_render_matches_golden_file(name: str) -> None:
    rendered = GOLDEN_CASES[name]()
    path = GOLDEN / name
    if UPDATE:
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with VIRTPLANE_UPDATE_GOLDEN=1 to create it"
    assert rendered == path.read_text(), f"{name} changed: review, then VIRTPLANE_UPDATE_GOLDEN=1 to accept"


def test_canonical_text_is_what_elementtree_writes() -> None:
    """canonical() has its own serializer (ElementTree's is most of a parse's time): for every element of
    the corpus and golden domains, and for text and attributes that need escaping, it writes exactly what
    ``ET.tostring`` writes for the stripped element (namespaced ones go to ET.tostring itself)."""
    import copy
    import xml.etree.ElementTree as ET
    from pathlib import Path

    from controller.adapters.libvirt.codec import passthrough

    here = Path(__file__).parent
    files = sorted((here / "corpus").glob("*.xml")) + sorted((here / "golden").glob("*.xml"))
    extra = [
        '<channel type="unix"><target type="virtio" name="a&amp;b&lt;c&gt;&quot;d&#10;e&#13;f&#9;g"/></channel>',
        "<description>  fish &amp; chips &lt;tasty&gt; \n</description>",
        '<metadata><x:owner xmlns:x="urn:x" x:a="1">t</x:owner></metadata>',
        "<empty></empty>",
    ]
    roots = [ET.parse(f).getroot() for f in files] + [ET.fromstring(x) for x in extra]
    checked = 0
    for root in roots:
        for el in root.iter():
            node = copy.deepcopy(el)
            passthrough._strip(node)
            assert passthrough.canonical(el) == ET.tostring(node, encoding="unicode", short_empty_elements=True)
            checked += 1
    assert len(files) >= 10 and checked > 500
