"""Adapters to the outside world: libvirt (connection, XML codec, error classification), and room for power
agents, qemu-img and storage servers' tools. They know nothing of etcd, the API or the controllers.
"""
