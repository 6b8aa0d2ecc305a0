"""One module per kind: gather inputs, call the planner in reconcilers/, execute through the one executor,
write status. Each module ends with its ``CONTROLLER`` registration; ``registry.default_registry()`` lists them.
"""
