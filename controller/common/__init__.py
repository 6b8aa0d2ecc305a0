"""Leaf modules any part of controller/ may use: the reconcile error tree, wire shapes, metrics.

Imports nothing else of controller/.
"""
