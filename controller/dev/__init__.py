"""Developer and demo tooling: the multi-host lab on this machine and the README's main job.

Not imported by the product.
"""
