"""Host planning: a Host's status from one observation of its libvirt."""
