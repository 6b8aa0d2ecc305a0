"""libvirt adapter: the XML codec, the error classification and one connection per host.

Public faces: :mod:`controller.adapters.libvirt.codec`, :mod:`controller.adapters.libvirt.errors`,
:class:`controller.adapters.libvirt.connection.HostConnection`.
"""
