"""Operator settings come from CCS_* variables and flags, with errors naming the variable."""

from __future__ import annotations

import json

import pytest

from ccs_operator.config import ConfigError, OperatorConfig


def test_defaults() -> None:
    config = OperatorConfig.from_env({})
    assert config.namespaces == () and config.log_format == "text"
    assert config.leader_election and config.metrics_port != config.health_port


def test_environment_is_read_with_prefix() -> None:
    config = OperatorConfig.from_env(
        {
            "CCS_NAMESPACES": "a, b",
            "CCS_LOG_FORMAT": "json",
            "CCS_METRICS_PORT": "9100",
            "CCS_LEADER_ELECTION": "false",
            "CCS_PROMETHEUS_URL": "http://prom:9090",
            "CCS_RECONCILE_WORKERS": "3",
            "METRICS_PORT": "1",  # unprefixed variables are not ours
        }
    )
    assert config.namespaces == ("a", "b")
    assert config.log_format == "json" and config.metrics_port == 9100
    assert not config.leader_election and config.prometheus_url == "http://prom:9090"
    assert config.reconcile_workers == 3


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CCS_METRICS_PORT": "x"}, "CCS_METRICS_PORT must be an integer"),
        ({"CCS_LOG_FORMAT": "xml"}, "CCS_LOG_FORMAT"),
        ({"CCS_LEADER_ELECTION": "maybe"}, "CCS_LEADER_ELECTION"),
        ({"CCS_METRICS_PORT": "8081"}, "must differ"),
        ({"CCS_RESYNC_SECONDS": "1"}, "CCS_RESYNC_SECONDS"),
        ({"CCS_RECONCILE_WORKERS": "0"}, "CCS_RECONCILE_WORKERS"),
        ({"CCS_METRICS_FROM": "monitoring"}, "CCS_METRICS_FROM must be a JSON list"),
        ({"CCS_METRICS_FROM": "[{}]"}, "set podSelector, namespaceSelector or ipBlock"),
        ({"CCS_METRICS_FROM": '{"podSelector": {}}'}, "CCS_METRICS_FROM"),
    ],
)
def test_bad_settings_name_the_variable(env: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        OperatorConfig.from_env(env)


def test_flags_override_environment() -> None:
    config = OperatorConfig.from_env({"CCS_LOG_FORMAT": "json"}).with_overrides(
        log_format="text", namespaces=None
    )
    assert config.log_format == "text" and config.namespaces == ()


def test_query_overrides_are_off_by_default() -> None:
    overrides = OperatorConfig.from_env({}).query_overrides
    assert overrides.mode == "disabled" and not overrides.permits("default")


def test_query_overrides_in_listed_namespaces() -> None:
    overrides = OperatorConfig.from_env(
        {
            "CCS_QUERY_OVERRIDES": "namespaces",
            "CCS_QUERY_OVERRIDE_NAMESPACES": "team-a, team-b",
            "CCS_QUERY_OVERRIDE_TIMEOUT_SECONDS": "1.5",
            "CCS_QUERY_OVERRIDE_MAX_SERIES": "5",
        }
    ).query_overrides
    assert overrides.permits("team-a") and overrides.permits("team-b")
    assert not overrides.permits("team-c")
    assert (overrides.timeout_seconds, overrides.max_series) == (1.5, 5)
    assert OperatorConfig.from_env({"CCS_QUERY_OVERRIDES": "allowed"}).query_overrides.permits(
        "team-c"
    )


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CCS_QUERY_OVERRIDES": "yes"}, "CCS_QUERY_OVERRIDES must be one of"),
        ({"CCS_QUERY_OVERRIDES": "namespaces"}, "needs CCS_QUERY_OVERRIDE_NAMESPACES"),
        ({"CCS_QUERY_OVERRIDE_NAMESPACES": "a"}, "set it to namespaces"),
        ({"CCS_QUERY_OVERRIDE_TIMEOUT_SECONDS": "0"}, "CCS_QUERY_OVERRIDE_TIMEOUT_SECONDS"),
        ({"CCS_QUERY_OVERRIDE_MAX_SERIES": "0"}, "CCS_QUERY_OVERRIDE_MAX_SERIES"),
    ],
)
def test_bad_query_override_settings_name_the_variable(env: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        OperatorConfig.from_env(env)


def test_prometheus_peers_reach_rendering() -> None:
    """CCS_METRICS_FROM (the chart's networkPolicy.metricsFrom, as JSON) is what the serving
    pods' NetworkPolicy admits to the metrics port; unset, the `monitoring` namespace."""
    default = OperatorConfig.from_env({}).render_settings().metrics_from
    assert [p.manifest() for p in default] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    peers = [{"namespaceSelector": {"matchLabels": {"team": "obs"}}, "podSelector": {}}]
    config = OperatorConfig.from_env({"CCS_METRICS_FROM": json.dumps(peers)})
    assert [p.manifest() for p in config.render_settings().metrics_from] == peers
