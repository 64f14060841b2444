"""One typed operator configuration, read from CCS_* environment variables at start-up."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from ccs_operator.core.api import NetworkPeer
from ccs_operator.core.confine import OVERRIDE_MODES, OverridePolicy
from ccs_operator.core.floor import DEFAULT_LEAD_TIME_SECONDS
from ccs_operator.core.render import (
    DEFAULT_LOADER_IMAGE,
    DEFAULT_METRICS_FROM,
    DEFAULT_PROMETHEUS_URL,
    RenderSettings,
)

ENV_PREFIX = "CCS_"


class ConfigError(ValueError):
    """A bad operator setting; the message names the variable."""


_PEERS = TypeAdapter(tuple[NetworkPeer, ...])


def _peers(
    env: Mapping[str, str], name: str, default: tuple[NetworkPeer, ...]
) -> tuple[NetworkPeer, ...]:
    """A JSON list of NetworkPolicy peers (`[{"namespaceSelector": {...}}]`)."""
    raw = env.get(ENV_PREFIX + name)
    if not raw:
        return default
    try:
        return _PEERS.validate_python(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(
            f"{ENV_PREFIX}{name} must be a JSON list of NetworkPolicy peers such as "
            f'[{{"namespaceSelector": {{"matchLabels": {{"kubernetes.io/metadata.name": '
            f'"monitoring"}}}}}}]: {first}'
        ) from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{ENV_PREFIX}{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics_port: int = 8080
    health_port: int = 8081
    loader_image: str = DEFAULT_LOADER_IMAGE
    # How often every service is re-checked even without events (drift repair backstop).
    resync_seconds: int = 300
    # Leader election over a coordination.k8s.io Lease, so two replicas never both act.
    leader_election: bool = True
    lease_name: str = "ccs-operator-leader"
    lease_namespace: str = "default"
    lease_duration_seconds: int = 15
    api_workers: int = 16
    # Services reconciled at once (the work queue's workers); more wait in the queue.
    reconcile_workers: int = 8
    request_timeout_seconds: float = 30.0
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    prometheus_bearer_token: str | None = field(default=None, repr=False)
    prometheus_timeout_seconds: float = 5.0
    # Floor decisions are evaluated by one shared scheduler at this granularity.
    floor_tick_seconds: float = 1.0
    # Rate window of the default queue-latency query; at least two scrape intervals.
    floor_window: str = "1m"
    default_lead_time_seconds: int = DEFAULT_LEAD_TIME_SECONDS
    # spec.autoscaling.floor.query: off unless the admin allows it (confine.OverridePolicy).
    query_overrides: OverridePolicy = field(default_factory=OverridePolicy)
    # KEDA mode: a ClusterTriggerAuthentication the ScaledObjects' Prometheus triggers use
    # (KEDA reads credentials from Secrets; the operator never does).
    keda_trigger_authentication: str | None = None
    # Where Prometheus scrapes from: admitted to the serving pods' metrics port by their
    # NetworkPolicy (spec.networkPolicy); the chart passes networkPolicy.metricsFrom.
    metrics_from: tuple[NetworkPeer, ...] = DEFAULT_METRICS_FROM

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        namespaces = tuple(
            n.strip() for n in env.get(ENV_PREFIX + "NAMESPACES", "").split(",") if n.strip()
        )
        log_format = env.get(ENV_PREFIX + "LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"{ENV_PREFIX}LOG_FORMAT must be text or json, got {log_format!r}")
        mode = env.get(ENV_PREFIX + "QUERY_OVERRIDES") or "disabled"
        if mode not in OVERRIDE_MODES:
            raise ConfigError(
                f"{ENV_PREFIX}QUERY_OVERRIDES must be one of {', '.join(OVERRIDE_MODES)}, "
                f"got {mode!r}"
            )
        overrides = OverridePolicy(
            mode=mode,
            namespaces=frozenset(
                n.strip()
                for n in env.get(ENV_PREFIX + "QUERY_OVERRIDE_NAMESPACES", "").split(",")
                if n.strip()
            ),
            timeout_seconds=_float(env, "QUERY_OVERRIDE_TIMEOUT_SECONDS", 2.0),
            max_series=_int(env, "QUERY_OVERRIDE_MAX_SERIES", 20),
        )
        config = cls(
            namespaces=namespaces,
            log_format=log_format,  # type: ignore[arg-type]
            log_level=env.get(ENV_PREFIX + "LOG_LEVEL", "INFO").upper(),
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port),
            health_port=_int(env, "HEALTH_PORT", cls.health_port),
            loader_image=env.get(ENV_PREFIX + "LOADER_IMAGE") or DEFAULT_LOADER_IMAGE,
            resync_seconds=_int(env, "RESYNC_SECONDS", cls.resync_seconds),
            leader_election=_bool(env, "LEADER_ELECTION", cls.leader_election),
            lease_name=env.get(ENV_PREFIX + "LEASE_NAME") or cls.lease_name,
            lease_namespace=env.get(ENV_PREFIX + "LEASE_NAMESPACE")
            or env.get("POD_NAMESPACE")
            or cls.lease_namespace,
            lease_duration_seconds=_int(env, "LEASE_DURATION_SECONDS", cls.lease_duration_seconds),
            api_workers=_int(env, "API_WORKERS", cls.api_workers),
            reconcile_workers=_int(env, "RECONCILE_WORKERS", cls.reconcile_workers),
            request_timeout_seconds=_float(env, "REQUEST_TIMEOUT_SECONDS", 30.0),
            prometheus_url=env.get(ENV_PREFIX + "PROMETHEUS_URL") or cls.prometheus_url,
            prometheus_bearer_token=env.get(ENV_PREFIX + "PROMETHEUS_BEARER_TOKEN") or None,
            prometheus_timeout_seconds=_float(env, "PROMETHEUS_TIMEOUT_SECONDS", 5.0),
            floor_tick_seconds=_float(env, "FLOOR_TICK_SECONDS", 1.0),
            floor_window=env.get(ENV_PREFIX + "FLOOR_WINDOW") or cls.floor_window,
            default_lead_time_seconds=_int(
                env, "DEFAULT_LEAD_TIME_SECONDS", DEFAULT_LEAD_TIME_SECONDS
            ),
            query_overrides=overrides,
            keda_trigger_authentication=env.get(ENV_PREFIX + "KEDA_TRIGGER_AUTHENTICATION")
            or None,
            metrics_from=_peers(env, "METRICS_FROM", DEFAULT_METRICS_FROM),
        )
        config.validate()
        return config

    def with_overrides(self, **overrides: object) -> OperatorConfig:
        """Command-line flags win over the environment; None means 'not given'."""
        given = {k: v for k, v in overrides.items() if v is not None}
        config = replace(self, **given)  # type: ignore[arg-type]
        config.validate()
        return config

    def render_settings(self) -> RenderSettings:
        """What rendering takes from the operator's settings (the reconcile adds whether the
        ServiceMonitor CRD is served)."""
        return RenderSettings(
            loader_image=self.loader_image,
            prometheus_url=self.prometheus_url,
            rate_window=self.floor_window,
            keda_authentication=self.keda_trigger_authentication,
            metrics_from=self.metrics_from,
        )

    def validate(self) -> None:
        for name in ("metrics_port", "health_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ConfigError(f"{name} must be a TCP port, got {port}")
        if self.metrics_port == self.health_port:
            raise ConfigError("metrics and health ports must differ")
        if self.resync_seconds < 10:
            raise ConfigError(f"{ENV_PREFIX}RESYNC_SECONDS must be >= 10")
        if not re.fullmatch(r"[0-9]+(ms|s|m|h)", self.floor_window):
            raise ConfigError(
                f"{ENV_PREFIX}FLOOR_WINDOW must be a duration like 1m, got {self.floor_window!r}"
            )
        if not 1 <= self.reconcile_workers <= 256:
            raise ConfigError(f"{ENV_PREFIX}RECONCILE_WORKERS must be between 1 and 256")
        q = self.query_overrides
        if q.mode == "namespaces" and not q.namespaces:
            raise ConfigError(
                f"{ENV_PREFIX}QUERY_OVERRIDES=namespaces needs "
                f"{ENV_PREFIX}QUERY_OVERRIDE_NAMESPACES (comma-separated namespace names)"
            )
        if q.mode != "namespaces" and q.namespaces:
            raise ConfigError(
                f"{ENV_PREFIX}QUERY_OVERRIDE_NAMESPACES is set but {ENV_PREFIX}QUERY_OVERRIDES "
                f"is {q.mode}; set it to namespaces"
            )
        if not 0 < q.timeout_seconds <= self.prometheus_timeout_seconds * 4:
            raise ConfigError(
                f"{ENV_PREFIX}QUERY_OVERRIDE_TIMEOUT_SECONDS must be > 0 and at most 4x "
                f"{ENV_PREFIX}PROMETHEUS_TIMEOUT_SECONDS"
            )
        if not 1 <= q.max_series <= 10_000:
            raise ConfigError(f"{ENV_PREFIX}QUERY_OVERRIDE_MAX_SERIES must be between 1 and 10000")
        if self.lease_duration_seconds < 5:
            raise ConfigError(f"{ENV_PREFIX}LEASE_DURATION_SECONDS must be >= 5")
