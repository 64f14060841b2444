"""PromQL for the warm floor, pure: the queries (queue latency per service, the leading
signals, pre-warm history), their parsing, and the error types. The client that sends
them is clients/prometheus.py.

Signals (Triton's own metrics; the ServiceMonitor's relabelling adds `namespace` and
`service` to every series scraped from a ccs's pods):

- mean queue wait, ms: Triton's counters (on by default)
      1e-3 * sum by (namespace, service) (rate(nv_inference_queue_duration_us[w]))
           / clamp_min(sum by (namespace, service) (rate(nv_inference_request_success[w])), ε)
  The clamp makes an idle service read 0 ms instead of NaN (0/0): an idle service has no
  queue, and reading "no data" there would hold a floor up all night. Queue time with no
  finished request reads as a huge latency, which is what a stuck queue is.
- p99 queue wait, ms: Triton's summary `nv_inference_queue_summary_us{quantile="0.99"}`
  (`--metrics-config summary_latencies=true`). Summary quantiles cannot be aggregated
  across pods, so the worst pod's p99 is used; a quantile with no observations (NaN) is
  dropped and the caller falls back to the mean.

Scale: `queue_latency_all` sends ONE instant query per evaluation for every service
(both statistics, tagged by a `stat` label) and returns a dict keyed by (namespace,
service). Only services with a user query override cost one query each.

- the leading signals, in the same query (`floor_signals_all`): the arrival rate
  (completed + failed requests, `rate` of both counters), requests pending in Triton's
  schedulers (`nv_inference_pending_request_count`), and busy model-instance seconds per
  second, per pod
      rate(nv_inference_compute_infer_duration_us) * rate(nv_inference_exec_count)
          / rate(nv_inference_request_success)
  because Triton counts a batch's compute time once for every request in it (measured on
  the real tritonserver: compute per request equals the batch's time), so dividing by the
  requests per execution counts each batch once. busy / arrivals is the service time S the
  floor sizes replicas with. And executions per second (`rate(nv_inference_exec_count)`):
  arrivals / executions is the mean batch, busy / executions the seconds per execution,
  the points of a batching service's cost line (batchcost.py).

Pre-warm history comes from the same arrival-rate series one and two periods earlier:
the highest rate over [now - k*period, now - k*period + lead + slack] (a subquery at 30 s
steps) relative to the rate at now - k*period, and only where both periods have it: the
smaller of the two ratios, so that one unusual day is not pre-warmed again. A ratio, not a
rate: the floor applies it to today's rate, so a quieter day (a weekend after weekdays)
pre-warms for its own level, not for the busier days'. Arrival rates do not depend on how
many replicas ran, so pre-warm cannot feed on its own replicas (replica counts or the
operator's own demand gauge would).
It needs nothing but Triton's series in Prometheus, kept for two periods (retention >= 2
days for Day, >= 15 days for Week).

Query override templates (confined by confine.py before they are sent: every selector gets
this service's namespace and service): plain PromQL with placeholders `{namespace}`, `{service}`,
`{model}` and `{window}`; no other braces are touched, so label matchers need no escaping.
A label placeholder inside a "..." or '...' string is replaced by the escaped value; outside
a string it becomes a complete double-quoted literal (`namespace={namespace}` works too).
Inside a backtick raw string it is refused: raw strings cannot escape a backtick. `{window}`
must be outside strings and is validated as a PromQL duration. So a hostile name cannot
leave its string literal (no PromQL injection).

"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    pass

QUEUE_DURATION_METRIC = "nv_inference_queue_duration_us"
REQUEST_SUCCESS_METRIC = "nv_inference_request_success"
QUEUE_SUMMARY_METRIC = "nv_inference_queue_summary_us"
REQUEST_FAILURE_METRIC = "nv_inference_request_failure"
COMPUTE_INFER_METRIC = "nv_inference_compute_infer_duration_us"
EXEC_COUNT_METRIC = "nv_inference_exec_count"
PENDING_METRIC = "nv_inference_pending_request_count"
DEFAULT_WINDOW = "1m"
HISTORY_STEP = "30s"
# A rate below this (requests/s) one period ago counts as this, so that a rise from nothing
# is a large finite ratio rather than a division by zero.
MIN_HISTORY_RATE = 0.1
# Requests per second below which a service counts as idle; avoids 0/0 = NaN.
_IDLE_RATE = 1e-9

_DURATION_RE = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_PLACEHOLDER_RE = re.compile(r"\{(namespace|service|model|window)\}")


class PrometheusError(Exception):
    """Base of the errors this module raises."""


class PrometheusUnavailable(PrometheusError):
    """No answer: connection refused, timeout, or a 5xx from Prometheus or a proxy."""


class QueryFailed(PrometheusError):
    """Prometheus answered but refused the query (bad PromQL, 4xx, auth) or sent garbage."""


class QueryTooExpensive(QueryFailed):
    """A query override that ran past its timeout, loaded too many samples, or returned
    more series than allowed; `what` says which, in words for a status message."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class NoData(PrometheusError):
    """The query succeeded and returned no series for the service asked about."""


class TemplateError(ValueError):
    """A query override template that cannot be rendered safely."""


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    url: str
    bearer_token: str | None = field(default=None, repr=False)
    timeout_seconds: float = 5.0
    # True, False, or a CA bundle path (as requests' `verify`).
    verify_tls: bool | str = True
    # Retries on connection errors and 502/503/504 only; the floor loop retries anyway.
    retries: int = 1

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must be http(s)://..., got {self.url!r}")
        if not self.timeout_seconds > 0:
            raise ValueError("timeout_seconds must be > 0")


class ServiceKey(NamedTuple):
    namespace: str
    service: str


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    value: float  # NaN and ±Inf are kept: callers decide what they mean
    timestamp: float


@dataclass(frozen=True, slots=True)
class QueueLatency:
    """Queue wait of one service. mean_ms may be NaN only from a user template."""

    mean_ms: float
    p99_ms: float | None = None

    def signal(self, prefer_p99: bool = False) -> float:
        if prefer_p99 and self.p99_ms is not None:
            return self.p99_ms
        return self.mean_ms


# --- pure query building -----------------------------------------------------------------


def escape_label_value(value: str, quote: str = '"') -> str:
    """Escape `value` for the inside of a PromQL string delimited by `quote` (" or ')."""
    if quote not in ('"', "'"):
        raise ValueError("PromQL escapes only exist in '...' and \"...\" strings")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: Prometheus rejects invalid UTF-8
        raise ValueError(f"label value is not valid UTF-8: {value!r}") from e
    out = []
    for ch in value:
        if ch == "\\" or ch == quote:
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def quote_label_value(value: str) -> str:
    return '"' + escape_label_value(value) + '"'


def validate_window(window: str) -> str:
    if not _DURATION_RE.match(window):
        raise TemplateError(f"window {window!r} is not a PromQL duration such as 1m or 30s")
    return window


def _string_context(template: str, end: int) -> str | None:
    """The quote character of the PromQL string open at `end`, or None outside strings."""
    quote: str | None = None
    i = 0
    while i < end:
        ch = template[i]
        if quote is None:
            if ch in "\"'`":
                quote = ch
            elif ch == "#":  # comment to end of line
                nl = template.find("\n", i)
                if nl == -1 or nl >= end:
                    raise TemplateError("placeholder inside a PromQL comment")
                i = nl
        elif ch == "\\" and quote != "`":
            i += 1  # skip the escaped character
        elif ch == quote:
            quote = None
        i += 1
    return quote


def render_template(
    template: str, *, namespace: str, service: str, model: str = "", window: str = DEFAULT_WINDOW
) -> str:
    """Fill a query override; see the module docstring for the rules."""
    validate_window(window)
    values = {"namespace": namespace, "service": service, "model": model}
    out: list[str] = []
    last = 0
    for m in _PLACEHOLDER_RE.finditer(template):
        name = m.group(1)
        quote = _string_context(template, m.start())
        out.append(template[last : m.start()])
        if name == "window":
            if quote is not None:
                raise TemplateError("{window} must be outside quotes, e.g. [{window}]")
            out.append(window)
        elif quote is None:
            out.append(quote_label_value(values[name]))
        elif quote == "`":
            raise TemplateError(f"{{{name}}} inside a `raw string` cannot be escaped")
        else:
            out.append(escape_label_value(values[name], quote))
        last = m.end()
    out.append(template[last:])
    return "".join(out)


def _selector(matchers: Mapping[str, str] | None) -> str:
    parts = ['namespace!=""', 'service!=""']
    for k, v in (matchers or {}).items():
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", k):
            raise ValueError(f"bad label name {k!r}")
        parts.append(f"{k}={quote_label_value(v)}")
    return "{" + ", ".join(parts) + "}"


def mean_queue_latency_query(
    window: str = DEFAULT_WINDOW, matchers: Mapping[str, str] | None = None
) -> str:
    """Mean queue wait in ms of every service (or those `matchers` select)."""
    w = validate_window(window)
    sel = _selector(matchers)
    return (
        f"1e-3 * sum by (namespace, service) (rate({QUEUE_DURATION_METRIC}{sel}[{w}]))"
        f" / clamp_min(sum by (namespace, service) (rate({REQUEST_SUCCESS_METRIC}{sel}[{w}])),"
        f" {_IDLE_RATE:g})"
    )


def p99_queue_latency_query(matchers: Mapping[str, str] | None = None) -> str:
    """Worst pod's p99 queue wait in ms; NaN quantiles (no observations) are dropped."""
    sel = _selector({**(matchers or {}), "quantile": "0.99"})
    return f"1e-3 * max by (namespace, service) ({QUEUE_SUMMARY_METRIC}{sel} >= 0)"


def batch_queue_latency_query(
    window: str = DEFAULT_WINDOW, matchers: Mapping[str, str] | None = None
) -> str:
    """Both statistics for every service in ONE query, told apart by a `stat` label."""
    mean = mean_queue_latency_query(window, matchers)
    p99 = p99_queue_latency_query(matchers)
    return (
        f'label_replace({mean}, "stat", "mean", "", "")'
        f' or label_replace({p99}, "stat", "p99", "", "")'
    )


def arrival_rate_query(
    window: str = DEFAULT_WINDOW,
    matchers: Mapping[str, str] | None = None,
    *,
    offset_seconds: int = 0,
) -> str:
    """Requests arriving per second (completed + failed) of every service, `offset_seconds`
    ago. Services that never failed have no failure series: they count 0 failures."""
    w = validate_window(window)
    if offset_seconds < 0:
        raise ValueError("offset_seconds must be >= 0")
    sel = _selector(matchers)
    at = f" offset {offset_seconds}s" if offset_seconds else ""
    success = f"sum by (namespace, service) (rate({REQUEST_SUCCESS_METRIC}{sel}[{w}]{at}))"
    failure = f"sum by (namespace, service) (rate({REQUEST_FAILURE_METRIC}{sel}[{w}]{at}))"
    return f"{success} + ({failure} or 0 * {success})"


def busy_instances_query(
    window: str = DEFAULT_WINDOW, matchers: Mapping[str, str] | None = None
) -> str:
    """Busy model-instance seconds per second of every service, each batch counted once."""
    w = validate_window(window)
    sel = _selector(matchers)
    return (
        f"1e-6 * sum by (namespace, service) (rate({COMPUTE_INFER_METRIC}{sel}[{w}])"
        f" * rate({EXEC_COUNT_METRIC}{sel}[{w}])"
        f" / clamp_min(rate({REQUEST_SUCCESS_METRIC}{sel}[{w}]), {_IDLE_RATE:g}))"
    )


def executions_query(
    window: str = DEFAULT_WINDOW, matchers: Mapping[str, str] | None = None
) -> str:
    """Model executions per second of every service (one per batch)."""
    w = validate_window(window)
    return f"sum by (namespace, service) (rate({EXEC_COUNT_METRIC}{_selector(matchers)}[{w}]))"


def pending_requests_query(matchers: Mapping[str, str] | None = None) -> str:
    return f"sum by (namespace, service) ({PENDING_METRIC}{_selector(matchers)})"


# The statistics of the one batched floor query, each tagged by a `stat` label.
SIGNAL_STATS = ("mean", "p99", "arrivals", "busy", "pending", "execs")


def floor_signals_query(
    window: str = DEFAULT_WINDOW, matchers: Mapping[str, str] | None = None
) -> str:
    """Everything the floor reads, for every service, in ONE query."""
    parts = {
        "mean": mean_queue_latency_query(window, matchers),
        "p99": p99_queue_latency_query(matchers),
        "arrivals": arrival_rate_query(window, matchers),
        "busy": busy_instances_query(window, matchers),
        "pending": pending_requests_query(matchers),
        "execs": executions_query(window, matchers),
    }
    return " or ".join(
        f'label_replace({parts[stat]}, "stat", "{stat}", "", "")' for stat in SIGNAL_STATS
    )


def prewarm_history_query(
    period_seconds: int,
    lead_time_seconds: int,
    *,
    slack_seconds: int = 0,
    periods: int = 2,
    window: str = DEFAULT_WINDOW,
    step: str = HISTORY_STEP,
) -> str:
    """Per service, the relative rise of the arrival rate seen k periods ago (k = 1..periods)
    over the next lead time: the highest rate over [now - k*period, now - k*period + lead +
    slack] divided by the rate at now - k*period. The smallest of those, and only where
    every period has data. Looking `slack` further ahead covers a peak that comes a little
    earlier or later than before, without holding replicas after it."""
    if not 0 < lead_time_seconds < period_seconds:
        raise ValueError("need 0 < lead_time_seconds < period_seconds")
    if not 0 <= slack_seconds < period_seconds / 4:
        raise ValueError("need 0 <= slack_seconds < period_seconds / 4")
    if periods < 1:
        raise ValueError("need periods >= 1")
    arrivals = arrival_rate_query(window)
    validate_window(step)
    span = lead_time_seconds + slack_seconds
    each = []
    for k in range(1, periods + 1):
        ahead = f"max_over_time(({arrivals})[{span}s:{step}] offset {k * period_seconds - span}s)"
        then = arrival_rate_query(window, offset_seconds=k * period_seconds)
        each.append(f"({ahead}) / clamp_min({then}, {MIN_HISTORY_RATE:g})")
    # ((a < b) or b) is min(a, b) where b exists; `and a` keeps only services with both.
    query = each[0]
    for other in each[1:]:
        query = f"((({query}) < ({other})) or ({other})) and ({query})"
    return query


# --- parsing -----------------------------------------------------------------------------


def parse_vector(result: Any) -> list[Sample]:
    """An instant-query `result` (vector or scalar) as Samples; QueryFailed if malformed."""
    try:
        if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
            # A scalar result arrives as [timestamp, "value"].
            return [Sample({}, float(result[1]), float(result[0]))]
        samples = []
        for item in result:
            ts, raw = item["value"]
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            samples.append(Sample(labels, float(raw), float(ts)))
        return samples
    except (TypeError, KeyError, ValueError) as e:
        raise QueryFailed(f"malformed Prometheus result: {result!r:.200}") from e


def group_queue_latency(samples: Iterable[Sample]) -> dict[ServiceKey, QueueLatency]:
    means: dict[ServiceKey, float] = {}
    p99s: dict[ServiceKey, float] = {}
    for s in samples:
        key = ServiceKey(s.labels.get("namespace", ""), s.labels.get("service", ""))
        if not key.namespace or not key.service:
            continue
        (p99s if s.labels.get("stat") == "p99" else means)[key] = s.value
    out = {}
    for key, mean in means.items():
        p99 = p99s.get(key)
        out[key] = QueueLatency(mean, p99 if p99 is not None and math.isfinite(p99) else None)
    return out


@dataclass(frozen=True, slots=True)
class FloorSignals:
    """What Prometheus holds for one service, from Triton's own series."""

    latency: QueueLatency | None
    arrival_rps: float | None
    busy_instances: float | None
    pending_requests: float | None
    executions_per_s: float | None = None


def group_floor_signals(samples: Iterable[Sample]) -> dict[ServiceKey, FloorSignals]:
    by: dict[ServiceKey, dict[str, float]] = {}
    for s in samples:
        key = ServiceKey(s.labels.get("namespace", ""), s.labels.get("service", ""))
        stat = s.labels.get("stat", "")
        if not key.namespace or not key.service or stat not in SIGNAL_STATS:
            continue
        by.setdefault(key, {})[stat] = s.value

    def finite(values: Mapping[str, float], stat: str) -> float | None:
        value = values.get(stat)
        return value if value is not None and math.isfinite(value) and value >= 0 else None

    out = {}
    for key, values in by.items():
        latency = None
        if "mean" in values:
            p99 = finite(values, "p99")
            latency = QueueLatency(values["mean"], p99)
        out[key] = FloorSignals(
            latency=latency,
            arrival_rps=finite(values, "arrivals"),
            busy_instances=finite(values, "busy"),
            pending_requests=finite(values, "pending"),
            executions_per_s=finite(values, "execs"),
        )
    return out
