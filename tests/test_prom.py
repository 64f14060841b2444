"""promql.py without a server: query building, escaping, templates, parsing, settings.

The same escaping is checked against the real Prometheus parser in test_prom_live.py.
"""

from __future__ import annotations

import math

import pytest

from ccs_operator.core.promql import (
    FloorSignals,
    PrometheusSettings,
    QueryFailed,
    QueueLatency,
    Sample,
    ServiceKey,
    TemplateError,
    arrival_rate_query,
    batch_queue_latency_query,
    busy_instances_query,
    escape_label_value,
    executions_query,
    floor_signals_query,
    group_floor_signals,
    group_queue_latency,
    mean_queue_latency_query,
    p99_queue_latency_query,
    parse_vector,
    prewarm_history_query,
    quote_label_value,
    render_template,
    validate_window,
)

HOSTILE = [
    'a"} or vector(1) #',
    "b\\",
    "c'd",
    "e\nf\r\tg",
    "`raw`",
    "{service}",
    "é☃",
    "nul\x00bell\x07del\x7f",
    '\\"} or up{job=~".+',
]


def _unescape(body: str, quote: str) -> str:
    """Go-style unescaping of what escape_label_value emits (the PromQL lexer's rules)."""
    out, i = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", quote: quote}
    while i < len(body):
        ch = body[i]
        if ch == quote:
            raise AssertionError(f"unescaped {quote} in {body!r}")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "x":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        else:
            out.append(simple[nxt])
            i += 2
    return "".join(out)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("quote", ['"', "'"])
def test_escape_round_trips_and_never_closes_the_string(value: str, quote: str) -> None:
    body = escape_label_value(value, quote)
    assert "\n" not in body
    assert _unescape(body, quote) == value


def test_escape_refuses_backticks_and_invalid_utf8() -> None:
    with pytest.raises(ValueError):
        escape_label_value("x", "`")
    with pytest.raises(ValueError, match="UTF-8"):
        escape_label_value("\ud800")


def test_render_template_by_context() -> None:
    template = (
        'sum(rate(my_wait_ms{namespace="{namespace}", service={service}, '
        "model='{model}'}[{window}]))"
    )
    got = render_template(template, namespace='n"s', service="s'v", model="m'", window="30s")
    assert got == ('sum(rate(my_wait_ms{namespace="n\\"s", service="s\'v", model=\'m\\\'\'}[30s]))')


def test_render_template_leaves_other_braces_alone() -> None:
    template = 'max(x{job="a", namespace={namespace}}) # {not_a_placeholder}'
    assert render_template(template, namespace="n", service="s") == (
        'max(x{job="a", namespace="n"}) # {not_a_placeholder}'
    )


def test_render_template_substitutes_once() -> None:
    # A value that looks like a placeholder stays a value.
    got = render_template(
        "x{service={service}, ns={namespace}}", namespace="{service}", service="v"
    )
    assert got == 'x{service="v", ns="{service}"}'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("x{service=`{service}`}", "raw string"),
        ('x{a="[{window}]"}', "outside quotes"),
        ("x # {service}\n", "comment"),
    ],
)
def test_render_template_refuses_unsafe_positions(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_template(template, namespace="n", service="s")


def test_escaped_quote_before_placeholder_keeps_string_context() -> None:
    got = render_template('x{a="q\\"{service}"}', namespace="n", service='"')
    assert got == 'x{a="q\\"\\""}'


@pytest.mark.parametrize("window", ["1m", "30s", "1h30m", "500ms"])
def test_good_windows(window: str) -> None:
    assert validate_window(window) == window


@pytest.mark.parametrize("window", ["", "1", "1m]) or vector(1", "5 m", "-1m", "1M"])
def test_bad_windows(window: str) -> None:
    with pytest.raises(TemplateError):
        validate_window(window)


def test_default_queries_group_by_service() -> None:
    mean = mean_queue_latency_query("2m")
    assert "sum by (namespace, service) (rate(nv_inference_queue_duration_us{" in mean
    assert "rate(nv_inference_request_success{" in mean and "[2m]" in mean
    assert "clamp_min(" in mean  # idle reads 0, not NaN
    p99 = p99_queue_latency_query()
    assert 'nv_inference_queue_summary_us{namespace!="", service!="", quantile="0.99"}' in p99
    batch = batch_queue_latency_query()
    assert batch.count('"stat"') == 2 and " or " in batch


def test_matchers_are_quoted() -> None:
    q = mean_queue_latency_query(matchers={"namespace": 'x"}', "service": "s"})
    assert 'namespace="x\\"}"' in q and 'service="s"' in q
    with pytest.raises(ValueError, match="label name"):
        mean_queue_latency_query(matchers={"bad-name": "x"})


def test_signal_queries() -> None:
    arrivals = arrival_rate_query("1m", {"namespace": "a"})
    sel = '{namespace!="", service!="", namespace="a"}'
    success = f"sum by (namespace, service) (rate(nv_inference_request_success{sel}[1m]))"
    failure = f"sum by (namespace, service) (rate(nv_inference_request_failure{sel}[1m]))"
    assert arrivals == f"{success} + ({failure} or 0 * {success})"
    busy = busy_instances_query()
    # Per pod: a batch's compute time is counted once per request in it; dividing by
    # requests per execution counts it once.
    assert "rate(nv_inference_compute_infer_duration_us" in busy
    assert "* rate(nv_inference_exec_count" in busy
    assert "/ clamp_min(rate(nv_inference_request_success" in busy
    q = floor_signals_query()
    for stat in ("mean", "p99", "arrivals", "busy", "pending", "execs"):
        assert f'"stat", "{stat}"' in q
    # One execution per batch: the batching cost line's denominator.
    assert executions_query("1m", {"namespace": "a"}) == (
        f"sum by (namespace, service) (rate(nv_inference_exec_count{sel}[1m]))"
    )
    with pytest.raises(TemplateError):
        floor_signals_query("1 minute")


def test_group_floor_signals() -> None:
    def sample(stat: str, value: float, svc: str = "one") -> Sample:
        return Sample({"namespace": "a", "service": svc, "stat": stat}, value, 0.0)

    got = group_floor_signals(
        [
            sample("mean", 12.0),
            sample("p99", math.nan),
            sample("arrivals", 300.0),
            sample("busy", 6.0),
            sample("pending", 4.0),
            sample("execs", 75.0),
            sample("arrivals", 10.0, "latency-missing"),
            sample("busy", -1.0, "latency-missing"),
            Sample({"namespace": "a", "stat": "mean"}, 1.0, 0.0),  # no service: dropped
        ]
    )
    assert got[ServiceKey("a", "one")] == FloorSignals(
        QueueLatency(12.0, None), 300.0, 6.0, 4.0, 75.0
    )
    assert got[ServiceKey("a", "latency-missing")] == FloorSignals(None, 10.0, None, None)
    assert len(got) == 2


def test_prewarm_history_query() -> None:
    q = prewarm_history_query(86_400, 600, slack_seconds=300)
    arrivals = arrival_rate_query()

    def rise(k: int) -> str:
        ahead = f"max_over_time(({arrivals})[900s:30s] offset {k * 86_400 - 900}s)"
        then = arrival_rate_query(offset_seconds=k * 86_400)
        return f"({ahead}) / clamp_min({then}, 0.1)"

    # The smaller rise of both periods, and only where both have data.
    assert q == f"((({rise(1)}) < ({rise(2)})) or ({rise(2)})) and ({rise(1)})"
    assert prewarm_history_query(86_400, 600, periods=1).startswith(
        f"(max_over_time(({arrivals})[600s:30s] offset 85800s))"
    )
    assert "[1m] offset 86400s" in arrival_rate_query(offset_seconds=86_400)
    for bad in (
        {"period_seconds": 600, "lead_time_seconds": 600},
        {"period_seconds": 600, "lead_time_seconds": 0},
        {"period_seconds": 600, "lead_time_seconds": 60, "slack_seconds": 200},
        {"period_seconds": 600, "lead_time_seconds": 60, "periods": 0},
    ):
        with pytest.raises(ValueError):
            prewarm_history_query(**bad)  # type: ignore[arg-type]


def test_quote_label_value() -> None:
    assert quote_label_value('a"b') == '"a\\"b"'


def test_parse_vector_and_scalar() -> None:
    vec = [
        {"metric": {"namespace": "a", "service": "b"}, "value": [1.5, "2.5"]},
        {"metric": {}, "value": [1.5, "NaN"]},
        {"metric": {}, "value": [1.5, "+Inf"]},
    ]
    got = parse_vector(vec)
    assert got[0] == Sample({"namespace": "a", "service": "b"}, 2.5, 1.5)
    assert math.isnan(got[1].value) and got[2].value == math.inf
    assert parse_vector([1.5, "3"]) == [Sample({}, 3.0, 1.5)]
    assert parse_vector([]) == []


@pytest.mark.parametrize("bad", [None, [{"metric": {}}], [{"value": [1, "x"], "metric": {}}]])
def test_parse_vector_malformed(bad: object) -> None:
    with pytest.raises(QueryFailed):
        parse_vector(bad)


def test_group_queue_latency() -> None:
    samples = [
        Sample({"namespace": "a", "service": "s", "stat": "mean"}, 12.0, 0),
        Sample({"namespace": "a", "service": "s", "stat": "p99"}, 80.0, 0),
        Sample({"namespace": "a", "service": "t", "stat": "mean"}, 3.0, 0),
        Sample({"namespace": "a", "service": "u", "stat": "p99"}, 9.0, 0),  # p99 only
        Sample({"namespace": "", "service": "v", "stat": "mean"}, 1.0, 0),
    ]
    assert group_queue_latency(samples) == {
        ServiceKey("a", "s"): QueueLatency(12.0, 80.0),
        ServiceKey("a", "t"): QueueLatency(3.0, None),
    }
    assert QueueLatency(12.0, 80.0).signal(prefer_p99=True) == 80.0
    assert QueueLatency(12.0).signal(prefer_p99=True) == 12.0


def test_settings() -> None:
    s = PrometheusSettings("http://prometheus:9090", bearer_token="s3cret")
    assert "s3cret" not in repr(s)
    with pytest.raises(ValueError):
        PrometheusSettings("prometheus:9090")
    with pytest.raises(ValueError):
        PrometheusSettings("http://p", timeout_seconds=0)
