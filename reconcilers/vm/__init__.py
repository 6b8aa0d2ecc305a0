"""VirtualMachine planning: the domain a VM needs, where it runs, what changes live or at the next boot."""
