"""libvirt XML that reaches the lab's storage servers (checked with libvirt 9.0 / QEMU 7.2 on lab hosts).

These are the snippets the lab tests boot and migrate guests with; the product's domain codec lives in
``controller/libvirt/codec`` and should produce the same elements.

- NFS: ``<disk type='network'>`` with ``<source protocol='nfs' name='<export>/<image>'>`` — QEMU's libnfs
  (``-blockdev {"driver":"nfs","server":{"host":...},"path":...}``). libvirt migrates it without
  ``--unsafe`` (network disks count as shared).
- Gluster: a ``netfs`` pool with ``<format type='glusterfs'/>`` that libvirtd mounts (FUSE) inside its own
  mount namespace, then plain ``<disk type='file'>`` images in it. libvirt sees ``fuse.glusterfs`` as a
  shared filesystem, so migration needs no ``--unsafe``.
- iSCSI: ``<disk type='network'>`` with ``<source protocol='iscsi' name='<iqn>/<lun>'>`` and
  ``<auth username=...><secret type='iscsi' usage=.../></auth>``; the secret (``iscsi_secret_xml``) is
  defined on every host that may run the guest (migration needs it on the destination) and its value set
  with ``virsh secret-set-value <uuid> --file <secret file> --plain``. libvirt hands it to QEMU encrypted.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from controller.dev.lab.storage.model import GlusterServer, IscsiServer, NfsServer


def nfs_disk_xml(server: NfsServer, image: str, target: str, fmt: str = "qcow2") -> str:
    name = quoteattr(f"{server.export}/{image}")
    return (
        f"<disk type='network' device='disk'><driver name='qemu' type={quoteattr(fmt)} cache='none'/>"
        f"<source protocol='nfs' name={name}><host name={quoteattr(server.address)}/></source>"
        f"<target dev={quoteattr(target)} bus='virtio'/></disk>"
    )


def nfs_snapshot_disk_xml(server: NfsServer, disk: str, overlay: str) -> str:
    """One ``<disk>`` of a ``<domainsnapshot>``: an external overlay created on the NFS export itself.

    ``virsh snapshot-create-as --diskspec vda,file=/path`` would make a *local* file overlay; a
    ``type='network'`` source keeps it on the server (QEMU creates it over libnfs).
    """
    name = quoteattr(f"{server.export}/{overlay}")
    return (
        f"<disk name={quoteattr(disk)} snapshot='external' type='network'><driver type='qcow2'/>"
        f"<source protocol='nfs' name={name}><host name={quoteattr(server.address)}/></source></disk>"
    )


def gluster_pool_xml(server: GlusterServer, pool: str, client_log: Path | None = None) -> str:
    """A netfs pool mounting the volume at ``server.mount_path`` (the same path on every host).

    ``client_log``: where the host's FUSE client logs (``-o log-file=``, through libvirt's
    ``fs:mount_opts``); without it the client writes ``/var/log/glusterfs/<mount path>.log`` on the machine.
    """
    options = (
        f"<fs:mount_opts><fs:option name={quoteattr(f'log-file={client_log}')}/></fs:mount_opts>"
        if client_log is not None
        else ""
    )
    return (
        f"<pool type='netfs' xmlns:fs='http://libvirt.org/schemas/storagepool/fs/1.0'><name>{pool}</name>"
        f"<source><host name={quoteattr(server.host)}/><dir path={quoteattr('/' + server.volume)}/>"
        f"<format type='glusterfs'/></source><target><path>{server.mount_path}</path></target>{options}</pool>"
    )


def iscsi_secret_xml(server: IscsiServer) -> str:
    return (
        "<secret ephemeral='no' private='yes'><description>CHAP password of the lab iSCSI target</description>"
        f"<usage type='iscsi'><target>{server.secret_usage}</target></usage></secret>"
    )


def iscsi_disk_xml(server: IscsiServer, target: str, usage: str | None = None) -> str:
    """The LUN as a raw virtio disk, CHAP through the libvirt secret ``usage`` (default: the lab's)."""
    host, _, port = server.portal.rpartition(":")
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
        f"<source protocol='iscsi' name={quoteattr(f'{server.iqn}/{server.lun}')}>"
        f"<host name={quoteattr(host)} port={quoteattr(port)}/>"
        f"<auth username={quoteattr(server.chap_user)}>"
        f"<secret type='iscsi' usage={quoteattr(usage or server.secret_usage)}/></auth></source>"
        f"<target dev={quoteattr(target)} bus='virtio'/></disk>"
    )
