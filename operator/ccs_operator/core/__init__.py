"""The pure core: the typed API, rendering, Triton config, PromQL, the floor policy and
status. No I/O: nothing here talks to the API server or Prometheus.
"""
