"""The operator's own Prometheus metrics (served on the metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "ccs_reconcile_total", "Reconciles of ClaudeCodeServices by result", ["result"]
)
RECONCILE_ERRORS = Counter("ccs_reconcile_errors_total", "Reconcile errors by reason", ["reason"])
RECONCILE_DURATION = Histogram(
    "ccs_reconcile_duration_seconds",
    "Duration of one reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHILDREN_APPLIED = Counter(
    "ccs_children_applied_total", "Server-side applies that changed a child, by kind", ["kind"]
)
APPLY_REQUESTS = Counter(
    "ccs_apply_requests_total", "Server-side apply requests sent, by kind", ["kind"]
)
APPLIES_SKIPPED = Counter(
    "ccs_apply_skipped_total",
    "Server-side applies not sent: the child still matches our last apply, by kind",
    ["kind"],
)
STATUS_WRITES = Counter("ccs_status_writes_total", "Status patches written")
SERVICES = Gauge("ccs_services", "ClaudeCodeServices known to the operator")
# Per-service series carry ccs_namespace/ccs_name, not namespace/name: Prometheus sets
# `namespace` to the operator pod's own namespace when it scrapes the operator.
SERVICE_LABELS = ["ccs_namespace", "ccs_name"]
FLOOR = Gauge("ccs_floor_replicas", "Current replica floor (HPA minReplicas)", SERVICE_LABELS)
FLOOR_MAX = Gauge("ccs_max_replicas", "Upper bound of replicas (spec.replicas.max)", SERVICE_LABELS)
FLOOR_DEMAND = Gauge(
    "ccs_floor_demand_replicas",
    "Replicas the service needed now without pre-warm; one period later, pre-warm history",
    SERVICE_LABELS,
)
FLOOR_FORECAST = Gauge(
    "ccs_floor_forecast_rps",
    "Arrival rate the floor forecasts one horizon (cold start + one evaluation) ahead",
    SERVICE_LABELS,
)
FLOOR_FORECAST_ERROR = Gauge(
    "ccs_floor_forecast_error_ratio",
    "Mean absolute error of recent forecasts relative to what arrived",
    SERVICE_LABELS,
)
FLOOR_HEADROOM = Gauge(
    "ccs_floor_headroom_ratio",
    "Headroom the floor holds above its forecast, from the service's own observed rises",
    SERVICE_LABELS,
)
FLOOR_CAPACITY = Gauge(
    "ccs_floor_capacity_per_replica_rps",
    "Requests per second one replica serves at the planned utilisation (measured)",
    SERVICE_LABELS,
)
FLOOR_UTILISATION_GAIN = Gauge(
    "ccs_floor_utilisation_gain",
    "Measured replica utilisation within the queue-wait target over the queueing model's (>= 1)",
    SERVICE_LABELS,
)
FLOOR_ABOVE_HPA = Gauge(
    "ccs_floor_replica_hours_above_hpa",
    "Replica-hours the floor held above what the HPA alone would run (about a day)",
    SERVICE_LABELS,
)
FLOOR_BREACH = Gauge(
    "ccs_floor_breach_minutes",
    "Minutes with the measured queue wait above the target (about a day)",
    SERVICE_LABELS,
)
FLOOR_PREWARM = Gauge(
    "ccs_floor_prewarm_state",
    "Pre-warm state of each service (1 for the current state)",
    [*SERVICE_LABELS, "state"],
)
FLOOR_ERRORS = Counter(
    "ccs_floor_evaluation_errors_total",
    "Floor evaluations that failed (the service's floor is held; others go on)",
)
QUEUE_LATENCY = Gauge(
    "ccs_queue_latency_milliseconds", "Last observed queue latency", SERVICE_LABELS
)
SERVICE_CONDITION = Gauge(
    "ccs_service_condition",
    "Conditions of each service: 1 on the current status (the other statuses have no series)",
    [*SERVICE_LABELS, "type", "status"],
)
FLOOR_DECISIONS = Counter("ccs_floor_decisions_total", "Floor decisions by reason", ["reason"])
PROM_QUERY_DURATION = Histogram(
    "ccs_prometheus_query_duration_seconds",
    "Duration of floor-loop Prometheus queries",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROM_QUERY_ERRORS = Counter(
    "ccs_prometheus_query_errors_total", "Failed floor-loop Prometheus queries", ["reason"]
)
FLOOR_LAG = Histogram(
    "ccs_floor_evaluation_lag_seconds",
    "Delay between a service's evaluation being due and its decision",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
COLD_START = Histogram(
    "ccs_cold_start_seconds",
    "Pod creation to Triton ready, for every new serving replica",
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200),
)
COLD_START_P50 = Gauge(
    "ccs_cold_start_p50_seconds", "Median cold start over recent replicas", SERVICE_LABELS
)
COLD_START_P95 = Gauge(
    "ccs_cold_start_p95_seconds", "95th percentile cold start over recent replicas", SERVICE_LABELS
)
MODEL_CACHE_LOOKUPS = Counter(
    "ccs_model_cache_lookups_total",
    "New replicas by what the node model cache did for them (hit, miss, refetch)",
    (*SERVICE_LABELS, "outcome"),
)
MODEL_CACHE_BYTES = Counter(
    "ccs_model_cache_bytes_total",
    "Model bytes new replicas took from the node cache (hit) or downloaded (miss, refetch)",
    (*SERVICE_LABELS, "outcome"),
)
MODEL_CACHE_SAVED = Gauge(
    "ccs_model_cache_saved_seconds",
    "Median model-loader seconds a cache hit saves against a miss, over recent replicas",
    SERVICE_LABELS,
)
