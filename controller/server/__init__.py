"""`virtplane server`: the process that runs etcd (embedded or external), the API and the controllers,
wired in one place.
"""
