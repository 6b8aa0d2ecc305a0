"""libvirt adapter: the XML codec, the error classification and one connection per host.

Public faces: :mod:`controller.libvirt.codec`, :mod:`controller.libvirt.errors`,
:class:`controller.libvirt.connection.HostConnection`.
"""
