"""The controller runtime: manager, work queue, informer cache, leader election, the controller registry,
the executor, and the state reconciles share. Generic: it knows no kind by name.
"""
