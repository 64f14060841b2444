"""The controllers: one work queue, the reconcile, the floor loop and kopf's wiring. They
connect the pure core to the clients.
"""
