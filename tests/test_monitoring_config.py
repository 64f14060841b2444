"""e2e.monitoring's rewrite of prometheus-operator's configuration for a process outside a pod.

The input is shaped like what prometheus-operator v0.85 generates for a ServiceMonitor with
the EndpointSlice role (its own golden files and the live Secret look like this), plus a
rule file glob and a job that needs a TLS asset mounted in the pod.
"""

from __future__ import annotations

import base64
import copy
import gzip
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.monitoring import (
    IN_POD_RULES,
    ConfigSync,
    Layout,
    MonitoringError,
    PodEnvironment,
    decode_generated,
    localize,
    pod_variables,
    prometheus_resource,
    prometheus_version,
    rule_file_names,
    servicemonitor_job,
)

GENERATED = yaml.safe_load(
    """
global:
  scrape_interval: 5s
  external_labels:
    prometheus: monitoring/ccs
    prometheus_replica: $(POD_NAME)
  evaluation_interval: 5s
rule_files:
- /etc/prometheus/rules/prometheus-ccs-rulefiles-0/*.yaml
scrape_configs:
- job_name: serviceMonitor/op-1/scraped/0
  honor_labels: false
  kubernetes_sd_configs:
  - role: endpointslice
    namespaces:
      names:
      - op-1
  scrape_interval: 7s
  metrics_path: /metrics
  relabel_configs:
  - action: keep
    source_labels: [__meta_kubernetes_endpointslice_port_name]
    regex: metrics
  - source_labels: [__meta_kubernetes_service_name]
    target_label: job
    replacement: ${1}
  - source_labels: [__address__, __tmp_hash]
    target_label: __tmp_hash
    regex: (.+);
    replacement: $1
  - source_labels: [__tmp_hash, __tmp_disable_sharding]
    regex: $(SHARD);|.+;.+
    action: keep
- job_name: serviceMonitor/op-1/tls/0
  kubernetes_sd_configs:
  - role: endpointslice
  tls_config:
    ca_file: /etc/prometheus/certs/secret_op-1_ca_ca.crt
- job_name: scrapeConfig/op-1/explicit
  kubernetes_sd_configs:
  - role: pod
    api_server: https://kube.example:6443
"""
)

ENV = PodEnvironment(
    kubeconfig="/state/monitoring/prometheus.kubeconfig",
    rules_dir="/state/monitoring/rules",
    variables=pod_variables("ccs"),
)


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
    return dict(job)


def test_in_cluster_service_discovery_reads_the_api_through_a_kubeconfig() -> None:
    local = localize(GENERATED, ENV).config
    (sd,) = _job(local, "serviceMonitor/op-1/scraped/0")["kubernetes_sd_configs"]
    assert sd == {
        "role": "endpointslice",
        "namespaces": {"names": ["op-1"]},
        "kubeconfig_file": ENV.kubeconfig,
    }


def test_an_explicit_api_server_is_left_as_written() -> None:
    local = localize(GENERATED, ENV).config
    (sd,) = _job(local, "scrapeConfig/op-1/explicit")["kubernetes_sd_configs"]
    assert sd == {"role": "pod", "api_server": "https://kube.example:6443"}


def test_pod_variables_are_expanded_as_the_config_reloader_does() -> None:
    local = localize(GENERATED, ENV).config
    assert local["global"]["external_labels"]["prometheus_replica"] == "prometheus-ccs-0"
    relabel = _job(local, "serviceMonitor/op-1/scraped/0")["relabel_configs"]
    assert relabel[-1]["regex"] == "0;|.+;.+"
    # Prometheus' own $1 and ${1} are not pod variables.
    assert relabel[1]["replacement"] == "${1}"
    assert relabel[2]["replacement"] == "$1"


def test_an_unset_pod_variable_is_an_error() -> None:
    config = {"global": {"external_labels": {"x": "$(NODE_NAME)"}}}
    with pytest.raises(MonitoringError, match=r"\$\(NODE_NAME\)"):
        localize(config, ENV)


def test_rule_files_point_at_the_materialised_configmaps() -> None:
    local = localize(GENERATED, ENV)
    assert local.config["rule_files"] == [
        "/state/monitoring/rules/prometheus-ccs-rulefiles-0/*.yaml"
    ]
    assert local.rule_configmaps == ("prometheus-ccs-rulefiles-0",)


def test_a_job_that_needs_a_pod_file_is_left_out_and_named() -> None:
    local = localize(GENERATED, ENV)
    assert local.dropped_jobs == ("serviceMonitor/op-1/tls/0",)
    assert [j["job_name"] for j in local.config["scrape_configs"]] == [
        "serviceMonitor/op-1/scraped/0",
        "scrapeConfig/op-1/explicit",
    ]


def test_everything_else_is_kept_as_the_operator_wrote_it() -> None:
    original = copy.deepcopy(GENERATED)
    local = localize(GENERATED, ENV).config
    assert original == GENERATED  # the input is not changed
    before = _job(GENERATED, "serviceMonitor/op-1/scraped/0")
    after = _job(local, "serviceMonitor/op-1/scraped/0")
    for key in ("honor_labels", "scrape_interval", "metrics_path"):
        assert after[key] == before[key]
    assert after["relabel_configs"][:3] == before["relabel_configs"][:3]
    assert local["global"]["scrape_interval"] == "5s"


def test_a_pod_path_outside_the_scrape_jobs_is_refused() -> None:
    config = {"alerting": {"alertmanagers": [{"tls_config": {"ca_file": "/etc/prometheus/x"}}]}}
    with pytest.raises(MonitoringError, match="alerting"):
        localize(config, ENV)


def test_the_secret_payload_is_gzipped_yaml() -> None:
    payload = base64.b64encode(gzip.compress(yaml.safe_dump(GENERATED).encode())).decode()
    assert decode_generated({"prometheus.yaml.gz": payload}) == GENERATED
    with pytest.raises(MonitoringError, match=r"prometheus\.yaml\.gz"):
        decode_generated({"other": payload})


def test_rule_file_names_refuse_paths() -> None:
    data = {"op-1-rules.yaml": "groups: []", "../escape.yaml": "x", "": "x"}
    assert rule_file_names(data) == {"op-1-rules.yaml": "groups: []"}


def test_the_prometheus_resource_selects_every_monitor_for_the_binary_version() -> None:
    assert prometheus_version("prometheus, version 3.5.0 (branch: module, revision: x)") == "v3.5.0"
    assert prometheus_version("prometheus, version 2.42.0+ds (branch: debian/sid)") == "v2.42.0"
    body = prometheus_resource("v2.42.0", "5s")
    spec = body["spec"]
    assert spec["version"] == "v2.42.0"
    assert spec["replicas"] == 0
    for kind in ("serviceMonitor", "podMonitor", "rule"):
        assert spec[f"{kind}Selector"] == {}
        assert spec[f"{kind}NamespaceSelector"] == {}
    assert (body["metadata"]["namespace"], body["metadata"]["name"]) == ("monitoring", "ccs")


def test_job_names_follow_prometheus_operator() -> None:
    assert servicemonitor_job("op-1", "scraped") == "serviceMonitor/op-1/scraped/0"
    assert IN_POD_RULES == "/etc/prometheus/rules/"


# --- the sync: the Secret and rule ConfigMaps written to files, reloads on change ---------


class _Core:
    """Stands in for CoreV1Api's two reads; the sync uses nothing else of it."""

    def __init__(self, generated: dict[str, Any], rules: dict[str, dict[str, str]]) -> None:
        self.generated = generated
        self.rules = rules

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        payload = base64.b64encode(gzip.compress(yaml.safe_dump(self.generated).encode()))
        return SimpleNamespace(data={"prometheus.yaml.gz": payload.decode()})

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        if name not in self.rules:
            raise ApiException(status=404)
        return SimpleNamespace(data=self.rules[name])


def _sync(tmp_path: Path, core: _Core, reloads: list[int]) -> ConfigSync:
    def reload() -> None:
        reloads.append(1)

    sync = ConfigSync(Layout(tmp_path), client.ApiClient(), reload=reload)
    sync.core = core  # type: ignore[assignment]
    return sync


def test_the_sync_writes_config_and_rules_and_reloads_only_on_change(tmp_path: Path) -> None:
    rules = {"prometheus-ccs-rulefiles-0": {"op-1-r.yaml": "groups: []\n"}}
    core, reloads = _Core(copy.deepcopy(GENERATED), rules), list[int]()
    sync = _sync(tmp_path, core, reloads)
    layout = sync.layout
    assert sync.resync() is True
    written = yaml.safe_load(layout.config.read_text())
    assert written["rule_files"] == [f"{layout.rules_dir}/prometheus-ccs-rulefiles-0/*.yaml"]
    sd = written["scrape_configs"][0]["kubernetes_sd_configs"][0]
    assert sd["kubeconfig_file"] == str(layout.prometheus_kubeconfig)
    rule_file = layout.rules_dir / "prometheus-ccs-rulefiles-0" / "op-1-r.yaml"
    assert rule_file.read_text() == "groups: []\n"
    assert reloads == [1]

    assert sync.resync() is False  # nothing changed: no write, no reload
    assert reloads == [1]

    core.rules = {"prometheus-ccs-rulefiles-0": {"op-2-r.yaml": "groups: []\n"}}
    assert sync.resync() is True  # a rule change alone reloads
    assert not rule_file.exists()
    assert reloads == [1, 1]


def test_a_failed_reload_is_retried_on_the_next_pass(tmp_path: Path) -> None:
    core, attempts = _Core(copy.deepcopy(GENERATED), {}), list[int]()

    def reload() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise MonitoringError("Prometheus is restarting")

    sync = ConfigSync(Layout(tmp_path), client.ApiClient(), reload=reload)
    sync.core = core  # type: ignore[assignment]
    with pytest.raises(MonitoringError):
        sync.resync()
    assert sync.resync() is False  # the files are current, yet the reload is owed
    assert len(attempts) == 2
    sync.resync()
    assert len(attempts) == 2
