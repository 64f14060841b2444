"""The clients: the API server (kube, watch, leader election) and Prometheus. Thin, blocking
or async wrappers with the errors classified; no policy.
"""
