"""Query overrides confined to their own namespace and service (confine.py).

Every check reads the confined query back with the parser and looks at each selector's
matchers, so a test passes only if what would be sent to Prometheus is confined.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import promql_parser as pp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccs_operator.core.confine import (
    FIELD,
    ConfinedQuery,
    OverridePolicy,
    QueryRefused,
    confine,
    confine_override,
)

from helpers import crd_schema

NS = "hostile"
SVC = "svc"


def selectors(promql: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, pp.VectorSelector):
            found.append(node)

    pp.walk(pp.parse(promql), pre_visit=visit)
    return found


def matchers(vs: Any) -> set[tuple[str, str, str]]:
    return {(m.name, repr(m.op), m.value) for m in vs.matchers.matchers}


def assert_confined(got: ConfinedQuery, namespace: str = NS, service: str = SVC) -> None:
    found = selectors(got.promql)
    assert found and len(found) == got.selectors
    for vs in found:
        labels = [(m.name, repr(m.op), m.value) for m in vs.matchers.matchers]
        assert [x for x in labels if x[0] == "namespace"] == [
            ("namespace", "MatchOp.Equal", namespace)
        ], got.promql
        assert [x for x in labels if x[0] == "service"] == [
            ("service", "MatchOp.Equal", service)
        ], got.promql


def run(query: str) -> ConfinedQuery:
    return confine_override(query, namespace=NS, service=SVC, model="m", window="1m")


def test_the_issues_cross_namespace_query_is_refused() -> None:
    with pytest.raises(QueryRefused) as refused:
        run('sum(process_resident_memory_bytes{namespace="other-tenant"}) / 1e6')
    message = str(refused.value)
    assert message.startswith(FIELD) and 'namespace="other-tenant"' in message
    assert "namespace={namespace}" in message  # the fix


def test_missing_namespace_and_service_are_injected() -> None:
    got = run("sum(process_resident_memory_bytes) / 1e6")
    assert_confined(got)
    assert got.promql == (
        'sum(process_resident_memory_bytes{namespace="hostile",service="svc"}) / 1000000'
    )


@pytest.mark.parametrize(
    "query",
    [
        'x{namespace=~".*"}',
        'x{namespace=~"hostile|other-tenant"}',
        'x{namespace=~"hostile"}',  # a regex, even one that matches only itself
        'x{namespace!="hostile"}',
        'x{namespace!~"kube-.*"}',
        'x{namespace="other-tenant"}',
        'x{namespace=""}',
        'x{namespace="hostile", namespace!="x"}',
        'x{service=~".+"}',
        'x{service="other-svc"}',
        'x{service!="svc"}',
        'rate(x{namespace=~".+"}[5m])',
    ],
)
def test_foreign_or_widened_matchers_are_refused(query: str) -> None:
    with pytest.raises(QueryRefused, match="reaches beyond this service"):
        run(query)


@pytest.mark.parametrize(
    "query",
    ['{__name__=~".+"}', '{__name__=~"nv_.*", namespace="hostile"}', '{job="x"}'],
)
def test_selectors_without_a_metric_name_are_refused(query: str) -> None:
    with pytest.raises(QueryRefused, match=r"name its metric|__name__"):
        run(query)


def test_a_name_matcher_counts_as_a_metric_name() -> None:
    assert_confined(run('{__name__="nv_inference_exec_count"}'))


@pytest.mark.parametrize(
    "query",
    [
        'label_replace(x, "namespace", "other-tenant", "", "")',
        'label_replace(x, "service", "$1", "pod", "(.*)")',
        'label_join(x, "namespace", ",", "a", "b")',
        'max(label_replace(rate(x[1m]), "namespace", "y", "", ""))',
    ],
)
def test_label_writers_may_not_rename_namespace_or_service(query: str) -> None:
    with pytest.raises(QueryRefused, match="may not write the label"):
        run(query)


def test_label_replace_of_other_labels_is_confined() -> None:
    assert_confined(run('label_replace(x, "dst", "$1", "namespace", "(.*)")'))


def test_subqueries_are_confined_inside() -> None:
    got = run("max_over_time(rate(nv_inference_exec_count[1m])[10m:30s])")
    assert_confined(got)
    assert "[10m:30s]" in got.promql
    with pytest.raises(QueryRefused, match="reaches beyond"):
        run('max_over_time(rate(x{namespace="other-tenant"}[1m])[10m:30s])')


@pytest.mark.parametrize("op", ["or", "unless", "and", "+", "/ on()", "> bool"])
def test_binary_operations_with_a_foreign_selector_are_refused(op: str) -> None:
    with pytest.raises(QueryRefused, match="reaches beyond"):
        run(f'x {op} y{{namespace="other-tenant"}}')
    assert_confined(run(f"x {op} y"))


def test_or_inside_braces_is_refused() -> None:
    with pytest.raises(QueryRefused, match="`or` inside"):
        run('x{a="1" or b="2"}')


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("x offset 1h", "offset 1h"),
        ("x offset -5m", "offset -5m"),
        ("x @ 1700000000", "@ 1700000000.000"),
        ("x @ start() offset 1m", "@ start() offset 1m"),
        ("rate(x[5m] @ end())", "[5m] @ end()"),
        ("max_over_time(x[5m:1m] offset 1d)", "offset 1d"),
    ],
)
def test_offset_and_at_stay_and_are_confined(query: str, kept: str) -> None:
    got = run(query)
    assert_confined(got)
    assert kept in got.promql, got.promql


def test_absent_cannot_probe_another_namespace() -> None:
    with pytest.raises(QueryRefused):
        run('absent(x{namespace="other-tenant"})')
    assert_confined(run("absent(x)"))


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("vector(52.6)", "reads no series"),
        ("52.6", "reads no series"),
        ("", "is empty"),
        ("   ", "is empty"),
        ("sum(rate(", "not valid PromQL"),
        ("x[2h]", "longer than 1h"),
        ("max_over_time(x[2h:1m])", "longer than 1h"),
        ("max_over_time(x[1h:1ms])", "more than 3600 steps"),
        ('x{a="{window}"}', "window"),  # a template error
    ],
)
def test_refusals_name_the_field_and_why(query: str, match: str) -> None:
    with pytest.raises(QueryRefused, match=match) as refused:
        run(query)
    assert str(refused.value).startswith(FIELD)


@pytest.mark.parametrize(
    "value",
    ['a"} or vector(1) #', "b\\", "c'd", "e\nf\tg", "`raw`", "é☃", '\\"} or up{job=~".+'],
)
def test_hostile_label_values_stay_inside_their_matcher(value: str) -> None:
    """The printed query, parsed again, holds the user's value as exactly one matcher value
    and no other selector (no PromQL injection through the printer)."""
    literal = pp.parse(f'label_replace(vector(1), "v", "{_escape(value)}", "", "")').args[2].val
    assert literal == value
    got = confine(f'x{{a="{_escape(value)}"}}', namespace=NS, service=SVC)
    [vs] = selectors(got.promql)
    assert matchers(vs) == {
        ("a", "MatchOp.Equal", value),
        ("namespace", "MatchOp.Equal", NS),
        ("service", "MatchOp.Equal", SVC),
    }


def _escape(value: str) -> str:
    from ccs_operator.core.promql import escape_label_value

    return escape_label_value(value)


def test_placeholders_fill_then_confine() -> None:
    template = (
        "1e-3 * sum(rate(nv_inference_queue_duration_us{namespace={namespace}, "
        'service="{service}", model="{model}"}[{window}]))'
    )
    got = confine_override(template, namespace=NS, service=SVC, model="m", window="30s")
    assert_confined(got)
    assert 'model="m"' in got.promql and "[30s]" in got.promql


def test_regex_matchers_on_other_labels_survive() -> None:
    got = run('histogram_quantile(0.99, sum by (le) (rate(h_bucket{le!="", pod=~"a.*\\\\d"}[1m])))')
    assert_confined(got)
    [vs] = selectors(got.promql)
    assert ("pod", "MatchOp.Re", "a.*\\d") in matchers(vs)


def test_every_selector_of_a_larger_query_is_confined() -> None:
    query = (
        "max(rate(a[1m])) / on() group_left() max(b offset 5m) "
        "or absent(c) * scalar(max(d @ start())) unless topk(3, e)"
    )
    got = run(query)
    assert got.selectors == 5
    assert_confined(got)


def test_confinement_is_per_service() -> None:
    a = confine("x", namespace="a", service="one")
    b = confine("x", namespace="b", service="two")
    assert_confined(a, "a", "one")
    assert_confined(b, "b", "two")
    assert a.promql != b.promql


def test_policy_modes() -> None:
    off = OverridePolicy()
    assert off.mode == "disabled" and not off.permits("team-a")
    assert "CCS_QUERY_OVERRIDES=disabled" in off.refusal("team-a")
    listed = OverridePolicy(mode="namespaces", namespaces=frozenset({"team-a"}))
    assert listed.permits("team-a") and not listed.permits("team-b")
    assert "team-b" in listed.refusal("team-b")
    assert OverridePolicy(mode="allowed").permits("anything")


def test_max_range_is_inclusive() -> None:
    assert_confined(run("rate(x[1h])"))
    assert timedelta(hours=1) == pp.parse("x[1h]").range


def _cel_query_rules() -> list[str]:
    floor = crd_schema()["properties"]["spec"]["properties"]["autoscaling"]["properties"]["floor"]
    return [r["rule"] for r in floor["properties"]["query"]["x-kubernetes-validations"]]


def _cel_admits(query: str) -> bool:
    """The CRD's query rules, read as Python regexes (RE2 and re agree on these)."""
    for rule in _cel_query_rules():
        verdict = True
        parts = re.findall(r"(!?)self\.matches\(r(['\"])(.*?)\2\)", rule)
        assert parts, rule
        for negated, _, pattern in parts:
            found = re.search(pattern, query) is not None
            verdict = verdict and (not found if negated else found)
        if not verdict:
            return False
    return True


@pytest.mark.parametrize(
    "query",
    [
        'max(nv_inference_queue_summary_us{namespace={namespace}, service="{service}"}) / 1e3',
        "max(nv_inference_queue_summary_us{namespace='{namespace}'}) / 1e3",
        'max(label_replace(rate(x[{window}]), "dst", "$1", "namespace", "(.*)"))',
        "sum by (namespace, service) (rate(nv_inference_exec_count[1m]))",
        'x{exported_namespace!="a"}',
    ],
)
def test_admission_never_refuses_what_the_operator_confines(query: str) -> None:
    assert _cel_admits(query)
    assert_confined(run(query))


@pytest.mark.parametrize(
    "query",
    [
        "  ",
        'sum(process_resident_memory_bytes{namespace="other-tenant"}) / 1e6',
        "x{namespace='other-tenant'}",
        'x{namespace=~".+"}',
        'x{service!="svc"}',
        '{__name__=~".+"}',
    ],
)
def test_what_admission_refuses_the_operator_refuses_too(query: str) -> None:
    assert not _cel_admits(query)
    with pytest.raises(QueryRefused):
        run(query)


# -- property: whatever the query, what is sent is confined ---------------------------------

_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_labels = st.sampled_from(["namespace", "service", "pod", "le", "__name__", "job"])
_ops = st.sampled_from(["=", "!=", "=~", "!~"])


@st.composite
def _selector(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["", "x", "nv_inference_exec_count", "a:b"]))
    matchers = draw(
        st.lists(
            st.builds(
                lambda label, op, value: f'{label}{op}"{_escape(value)}"',
                _labels,
                _ops,
                st.one_of(st.sampled_from([NS, SVC, "other-tenant", ".+", ""]), _values),
            ),
            max_size=3,
        )
    )
    text = name + ("{" + ",".join(matchers) + "}" if matchers or not name else "")
    return text + draw(st.sampled_from(["", " offset 5m", " @ start()", " offset -1m"]))


@st.composite
def _query(draw: st.DrawFn, depth: int = 0) -> str:
    leaf = draw(_selector())
    if depth >= 2:
        return leaf
    inner = draw(_query(depth + 1))
    other = draw(_query(depth + 1))
    return draw(
        st.sampled_from(
            [
                leaf,
                f"rate({leaf.split(' ')[0]}[5m])",
                f"sum by (namespace) ({inner})",
                f"({inner}) or ({other})",
                f"({inner}) unless on() ({other})",
                f"max_over_time(({inner})[10m:1m])",
                f'label_replace({inner}, "{draw(_labels)}", "v", "", "")',
                f"absent({inner})",
            ]
        )
    )


@settings(max_examples=300, deadline=None)
@given(_query())
def test_any_query_is_refused_or_fully_confined(query: str) -> None:
    try:
        got = confine(query, namespace=NS, service=SVC)
    except QueryRefused:
        return
    assert_confined(got)
    # Nothing else changed in the selectors: the user's other matchers are all still there.
    original = [
        m for vs in selectors(query) for m in matchers(vs) if m[0] not in ("namespace", "service")
    ]
    sent = [
        m
        for vs in selectors(got.promql)
        for m in matchers(vs)
        if m[0] not in ("namespace", "service")
    ]
    assert sorted(original) == sorted(sent)
