"""Network planning: the libvirt network each host of the cluster needs."""
