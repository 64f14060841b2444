"""The Prometheus client: blocking instant queries for the floor loop, errors classified.

Query building and parsing are pure (core/promql.py); this module only sends them.
Threads: the client is meant to be called through `asyncio.to_thread`. requests.Session
is not documented as thread-safe, so each thread gets its own PrometheusConnect/Session.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import requests
from prometheus_api_client import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from ccs_operator.core.promql import (
    DEFAULT_WINDOW,
    HISTORY_STEP,
    FloorSignals,
    NoData,
    PrometheusSettings,
    PrometheusUnavailable,
    QueryFailed,
    QueryTooExpensive,
    QueueLatency,
    Sample,
    ServiceKey,
    batch_queue_latency_query,
    floor_signals_query,
    group_floor_signals,
    group_queue_latency,
    parse_vector,
    prewarm_history_query,
)

if TYPE_CHECKING:
    from ccs_operator.core.confine import ConfinedQuery

_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")


class PrometheusClient:
    """Blocking Prometheus reads; safe to call from several threads at once."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[PrometheusConnect] = []

    def _connection(self, *, retry: bool = True) -> PrometheusConnect:
        """This thread's connection; `retry=False` for budgeted queries (overrides), which
        are sent once per interval and never again on a timeout."""
        attr = "conn" if retry else "conn_once"
        conn: PrometheusConnect | None = getattr(self._local, attr, None)
        if conn is None:
            s = self.settings
            session = requests.Session()
            session.verify = s.verify_tls
            headers = {"Authorization": f"Bearer {s.bearer_token}"} if s.bearer_token else {}
            retries = Retry(
                total=s.retries if retry else 0,
                backoff_factor=0.2,
                status_forcelist=(502, 503, 504),
                allowed_methods=frozenset({"GET"}),
                raise_on_status=False,
            )
            conn = PrometheusConnect(
                url=s.url.rstrip("/"),
                headers=headers,
                retry=retries,
                session=session,
                timeout=s.timeout_seconds,  # type: ignore[arg-type]  # float works in requests
            )
            setattr(self._local, attr, conn)
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for c in conns:
            c.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(
        self,
        promql: str,
        *,
        at: float | None = None,
        limit: int | None = None,
        timeout_seconds: float | None = None,
    ) -> list[Sample]:
        """One instant query; `at` is the evaluation time (epoch seconds), default now.

        With `timeout_seconds` (a query override's budget) Prometheus stops evaluating after
        that long, and a timeout or a sample-limit refusal is QueryTooExpensive. `limit` is
        Prometheus' series limit (`limit` parameter, Prometheus 3.x; older versions ignore
        it, and callers check the result size as well)."""
        budget = timeout_seconds
        seconds = budget if budget is not None else self.settings.timeout_seconds
        # Plain seconds (Prometheus reads a float), so that a budget under 1 ms still parses.
        params: dict[str, str] = {"timeout": f"{max(seconds, 0.001):.3f}"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        if limit is not None:
            params["limit"] = str(limit)
        try:
            result = self._connection(retry=budget is None).custom_query(
                promql,
                params=params,
                # The HTTP read waits a little longer than Prometheus' own budget, so that a
                # slow query ends with Prometheus' answer, not a dropped connection.
                timeout=(seconds + 1.0) if budget is not None else None,  # type: ignore[arg-type]
            )
        except PrometheusApiClientException as e:
            m = _STATUS_RE.search(str(e))
            status = int(m.group(1)) if m else 0
            text = str(e)
            if budget is not None and ("timed out" in text or '"timeout"' in text):
                raise QueryTooExpensive(f"{e} for query {promql!r:.300}", "slow") from e
            if budget is not None and "too many samples" in text:
                raise QueryTooExpensive(f"{e} for query {promql!r:.300}", "samples") from e
            if status >= 500:
                raise PrometheusUnavailable(f"{self.settings.url}: {e}") from e
            raise QueryFailed(f"{e} for query {promql!r:.300}") from e
        except requests.Timeout as e:
            if budget is not None:
                raise QueryTooExpensive(f"{self.settings.url}: {e}", "slow") from e
            raise PrometheusUnavailable(f"{self.settings.url}: {e}") from e
        except requests.ConnectionError as e:
            # urllib3 reports a read timeout as a ConnectionError once its retries are spent.
            if budget is not None and "Read timed out" in str(e):
                raise QueryTooExpensive(f"{self.settings.url}: {e}", "slow") from e
            raise PrometheusUnavailable(f"{self.settings.url}: {e}") from e
        except (ValueError, KeyError, TypeError) as e:
            # A 200 whose body is not Prometheus JSON (a proxy's login page, say). Checked
            # before RequestException: requests' JSONDecodeError is both.
            raise QueryFailed(f"{self.settings.url}: response is not Prometheus JSON") from e
        except requests.RequestException as e:
            raise PrometheusUnavailable(f"{self.settings.url}: {e}") from e
        return parse_vector(result)

    def queue_latency_all(
        self,
        window: str = DEFAULT_WINDOW,
        matchers: Mapping[str, str] | None = None,
        *,
        at: float | None = None,
    ) -> dict[ServiceKey, QueueLatency]:
        """Queue latency of every service that has Triton series, in ONE query."""
        return group_queue_latency(self.query(batch_queue_latency_query(window, matchers), at=at))

    def queue_latency(
        self,
        namespace: str,
        service: str,
        *,
        query: ConfinedQuery | None = None,
        window: str = DEFAULT_WINDOW,
        at: float | None = None,
        max_series: int | None = None,
        timeout_seconds: float | None = None,
    ) -> QueueLatency:
        """One service: its confined override `query` if given, else the default queries.

        An override's result must be a number in ms; if it returns several series the
        largest is used (the worst pod or model is the one users wait on). More than
        `max_series` series is QueryTooExpensive. Raises NoData.
        """
        if query is None:
            got = self.queue_latency_all(
                window, {"namespace": namespace, "service": service}, at=at
            )
            key = ServiceKey(namespace, service)
            if key not in got:
                raise NoData(f"no Triton queue series for service {namespace}/{service}")
            return got[key]
        if (query.namespace, query.service) != (namespace, service):
            raise ValueError("a confined query runs only for the service it was confined to")
        samples = self.query(
            query.promql,
            at=at,
            limit=None if max_series is None else max_series + 1,
            timeout_seconds=timeout_seconds,
        )
        if max_series is not None and len(samples) > max_series:
            raise QueryTooExpensive(
                f"query override for {namespace}/{service} returned more than {max_series} series",
                "series",
            )
        if not samples:
            raise NoData(f"query override returned nothing for {namespace}/{service}")
        values = [s.value for s in samples]
        finite = [v for v in values if not math.isnan(v)]
        return QueueLatency(max(finite) if finite else math.nan)

    def floor_signals_all(
        self,
        window: str = DEFAULT_WINDOW,
        matchers: Mapping[str, str] | None = None,
        *,
        at: float | None = None,
    ) -> dict[ServiceKey, FloorSignals]:
        """Queue latency and the leading signals of every service, in ONE query."""
        return group_floor_signals(self.query(floor_signals_query(window, matchers), at=at))

    def prewarm_history_all(
        self,
        period_seconds: int,
        lead_time_seconds: int,
        *,
        slack_seconds: int = 0,
        periods: int = 2,
        window: str = DEFAULT_WINDOW,
        step: str = HISTORY_STEP,
        at: float | None = None,
    ) -> dict[ServiceKey, float]:
        """The relative rise of the arrival rate over the next lead time, one and two periods
        ago (see prewarm_history_query), per service; services without that history are
        absent. One query per distinct (period, lead) pair."""
        promql = prewarm_history_query(
            period_seconds,
            lead_time_seconds,
            slack_seconds=slack_seconds,
            periods=periods,
            window=window,
            step=step,
        )
        out: dict[ServiceKey, float] = {}
        for s in self.query(promql, at=at):
            key = ServiceKey(s.labels.get("namespace", ""), s.labels.get("service", ""))
            if key.namespace and key.service and math.isfinite(s.value) and s.value >= 0:
                out[key] = s.value
        return out
