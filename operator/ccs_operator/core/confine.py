"""Confine a user's PromQL (`spec.autoscaling.floor.query`) to its own namespace and service.

The operator runs a query override with its own Prometheus credentials, so an unconfined
override would let anyone allowed to create a ClaudeCodeService read any series in the
cluster's Prometheus. Here the query is parsed by a real PromQL parser (`promql-parser`, a
binding of the Rust port of the Prometheus parser) and walked:

- every vector and matrix selector (inside functions, aggregations, binary operations with
  `or`/`unless`/`and`, subqueries) must select a metric by name, and gets
  `namespace="<ccs namespace>"` and `service="<ccs name>"`; a selector whose matcher on
  either label is anything else (`!=`, `=~`, `!~`, another value) is refused, never
  widened or silently narrowed;
- `label_replace`/`label_join` may not write `namespace` or `service`;
- ranges and subquery ranges are at most MAX_RANGE, subqueries at most MAX_SUBQUERY_STEPS
  steps (cost; Prometheus' own timeout and sample limit still apply); `offset` and `@`
  stay (they move in time, not across tenants);
- a query that reads no series at all is refused (it would move the floor on a number the
  user chose, not on the service).

The query sent is printed from the confined AST by the library's printer (`prettify`, which
escapes string literals), parsed again and checked again: what Prometheus receives is what
was checked. The binding's attribute setters do not reach its printer, so each confined
selector is itself produced by the parser and compared, matcher by matcher, with the one
intended before it replaces the original in the tree (`promql_parser.transform`).

Pure: no I/O. Errors are `QueryRefused`, whose message names the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import promql_parser as pp

from ccs_operator.core.promql import TemplateError, escape_label_value, render_template

FIELD = "spec.autoscaling.floor.query"
NAMESPACE_LABEL = "namespace"
SERVICE_LABEL = "service"
# Longest range (`x[1h]`) or subquery range (`(...)[1h:1m]`) an override may read.
MAX_RANGE = timedelta(hours=1)
# Most evaluation steps of one subquery (range / step): `[1h:1ms]` would be 3.6 million.
MAX_SUBQUERY_STEPS = 3600

# MatchOp values are not hashable: keyed by their int value.
_OPS = {
    int(pp.MatchOp.Equal): "=",
    int(pp.MatchOp.NotEqual): "!=",
    int(pp.MatchOp.Re): "=~",
    int(pp.MatchOp.NotRe): "!~",
}
_EQUAL = int(pp.MatchOp.Equal)
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LABEL_WRITERS = ("label_replace", "label_join")


OverrideMode = Literal["disabled", "allowed", "namespaces"]
OVERRIDE_MODES: tuple[OverrideMode, ...] = ("disabled", "allowed", "namespaces")


@dataclass(frozen=True, slots=True)
class OverridePolicy:
    """The cluster admin's switch for query overrides (CCS_QUERY_OVERRIDES and friends).

    disabled (the default): no override runs; a ccs that sets one keeps its floor held and
    says why. allowed: overrides run in every namespace. namespaces: only in `namespaces`.
    Confinement applies in every mode; the switch exists because confinement trusts the
    `namespace` and `service` labels of every series in the operator's Prometheus, which
    only the admin can vouch for (a scrape job with honor_labels, federation or remote-write
    can carry any label values)."""

    mode: OverrideMode = "disabled"
    namespaces: frozenset[str] = frozenset()
    # Prometheus evaluates one override for at most this long.
    timeout_seconds: float = 2.0
    # An override returning more series than this is refused as too expensive.
    max_series: int = 20

    def permits(self, namespace: str) -> bool:
        if self.mode == "allowed":
            return True
        return self.mode == "namespaces" and namespace in self.namespaces

    def refusal(self, namespace: str) -> str:
        """Why an override does not run in `namespace`, with the fix."""
        setting = (
            "CCS_QUERY_OVERRIDES=disabled"
            if self.mode == "disabled"
            else f"CCS_QUERY_OVERRIDE_NAMESPACES, which does not list {namespace}"
        )
        return (
            f"{FIELD} is not run: the operator's setting {setting} (chart value "
            "queryOverrides) turns query overrides off here; the floor is held. Remove the "
            "field to use Triton's queue series, or ask the cluster admin to allow overrides "
            "in this namespace"
        )


class QueryRefused(ValueError):
    """A query override that cannot be confined to its own service; the message says why and
    how to fix it."""


@dataclass(frozen=True, slots=True)
class ConfinedQuery:
    """A query override that reads only its own service's series, ready to send."""

    promql: str
    namespace: str
    service: str
    selectors: int


Key = tuple[int, str, str]


def _key(m: Any) -> Key:
    return (int(m.op), m.name, m.value)


def _describe(m: Any) -> str:
    return f'{m.name}{_OPS[int(m.op)]}"{escape_label_value(m.value)}"'


def _check_selector(vs: Any, namespace: str, service: str) -> None:
    matchers = list(vs.matchers.matchers)
    if vs.matchers.or_matchers:
        raise QueryRefused(
            f"{FIELD}: `or` inside a selector's braces cannot be confined; "
            "write two selectors joined by `or`"
        )
    names = [m for m in matchers if m.name == "__name__"]
    if vs.name is None and not any(int(m.op) == _EQUAL for m in names):
        raise QueryRefused(
            f"{FIELD}: every selector must name its metric (e.g. "
            'nv_inference_queue_duration_us{...}); a selector such as {__name__=~".+"} '
            "would read every series of the service"
        )
    if any(int(m.op) != _EQUAL for m in names):
        raise QueryRefused(f"{FIELD}: __name__ may only be matched with =; name the metric instead")
    for label, own in ((NAMESPACE_LABEL, namespace), (SERVICE_LABEL, service)):
        for m in matchers:
            if m.name == label and (int(m.op) != _EQUAL or m.value != own):
                raise QueryRefused(
                    f"{FIELD}: the matcher {_describe(m)} reaches beyond this service; an "
                    f'override reads only {label}="{escape_label_value(own)}" (write '
                    f"{label}={{{label}}} or leave the matcher out: the operator adds it)"
                )


def _check_node(node: Any, namespace: str, service: str, seen: list[Any]) -> None:
    if isinstance(node, pp.VectorSelector):
        seen.append(node)
        _check_selector(node, namespace, service)
    elif isinstance(node, pp.MatrixSelector):
        if node.range > MAX_RANGE:
            raise QueryRefused(
                f"{FIELD}: the range [{pp.display_duration(node.range)}] is longer than "
                f"{pp.display_duration(MAX_RANGE)}; use a shorter range such as [{{window}}]"
            )
    elif isinstance(node, pp.SubqueryExpr):
        if node.range is not None and node.range > MAX_RANGE:
            raise QueryRefused(
                f"{FIELD}: the subquery range [{pp.display_duration(node.range)}:] is longer "
                f"than {pp.display_duration(MAX_RANGE)}; shorten it"
            )
        step = node.step
        if (
            node.range is not None
            and step is not None
            and step > timedelta(0)
            and node.range / step > MAX_SUBQUERY_STEPS
        ):
            raise QueryRefused(
                f"{FIELD}: the subquery [{pp.display_duration(node.range)}:"
                f"{pp.display_duration(step)}] has more than {MAX_SUBQUERY_STEPS} steps; "
                "use a longer step"
            )
    elif isinstance(node, pp.Call) and node.func.name in _LABEL_WRITERS:
        dest = node.args[1] if len(node.args) > 1 else None
        if isinstance(dest, pp.StringLiteral) and dest.val in (NAMESPACE_LABEL, SERVICE_LABEL):
            raise QueryRefused(
                f"{FIELD}: {node.func.name} may not write the label {dest.val!r}: series are "
                "told apart by namespace and service; write another label"
            )


def _walk_checked(expr: Any, namespace: str, service: str) -> list[Any]:
    """Every selector of `expr`, after checking every node; raises QueryRefused."""
    seen: list[Any] = []
    failure: list[QueryRefused] = []

    def visit(node: Any) -> bool:
        try:
            _check_node(node, namespace, service, seen)
        except QueryRefused as exc:
            failure.append(exc)
            return False
        return True

    pp.walk(expr, pre_visit=visit)
    if failure:
        raise failure[0]
    return seen


def _at_text(at: Any) -> str:
    if at.type == pp.AtModifierType.Start:
        return "start()"
    if at.type == pp.AtModifierType.End:
        return "end()"
    when: datetime = at.at
    return f"{when.replace(tzinfo=when.tzinfo or UTC).timestamp():.3f}"


def _duration_text(delta: timedelta) -> str:
    sign = "-" if delta < timedelta(0) else ""
    return sign + pp.display_duration(abs(delta))


def _at_key(at: Any) -> tuple[Any, ...] | None:
    return None if at is None else (int(at.type), at.at)


def _pinned(vs: Any, namespace: str, service: str) -> Any:
    """`vs` with namespace and service equality matchers, produced by the parser and
    compared with the intended selector (name, matchers, offset, @) before it is used."""
    matchers = list(vs.matchers.matchers)
    present = {m.name for m in matchers}
    wanted = [_key(m) for m in matchers]
    for label, own in ((NAMESPACE_LABEL, namespace), (SERVICE_LABEL, service)):
        if label not in present:
            wanted.append((_EQUAL, label, own))
    if vs.name is not None and not _METRIC_NAME_RE.match(vs.name):
        raise QueryRefused(f"{FIELD}: metric name {vs.name!r} cannot be confined")
    for op, name, _ in wanted:
        if not _LABEL_NAME_RE.match(name) or op not in _OPS:
            raise QueryRefused(f"{FIELD}: label name {name!r} cannot be confined")
    body = ",".join(f'{n}{_OPS[op]}"{escape_label_value(v)}"' for op, n, v in wanted)
    text = f"{vs.name or ''}{{{body}}}"
    if vs.at is not None:
        text += f" @ {_at_text(vs.at)}"
    if vs.offset is not None:
        text += f" offset {_duration_text(vs.offset)}"
    made = pp.parse(text)
    same = (
        isinstance(made, pp.VectorSelector)
        and made.name == vs.name
        and sorted(map(_key, made.matchers.matchers)) == sorted(wanted)
        and not made.matchers.or_matchers
        and made.offset == vs.offset
        and _at_key(made.at) == _at_key(vs.at)
    )
    if not same:  # the parser read the selector back differently: never send it
        raise QueryRefused(f"{FIELD}: a selector could not be confined exactly; simplify it")
    return made


def confine(query: str, *, namespace: str, service: str) -> ConfinedQuery:
    """Parse `query` (placeholders already filled) and confine it; QueryRefused if it
    cannot be."""
    if not query.strip():
        raise QueryRefused(f"{FIELD}: is empty; remove the field to use Triton's queue series")
    try:
        expr = pp.parse(query)
    except ValueError as exc:
        raise QueryRefused(f"{FIELD}: is not valid PromQL ({exc}); fix the syntax") from None
    selectors = _walk_checked(expr, namespace, service)
    if not selectors:
        raise QueryRefused(
            f"{FIELD}: reads no series; an override must read this service's metrics, e.g. "
            'max(nv_inference_queue_summary_us{quantile="0.99"}) / 1e3'
        )

    def pin(node: Any) -> Any:
        return _pinned(node, namespace, service) if isinstance(node, pp.VectorSelector) else None

    confined = pp.transform(expr, post_visit=pin)
    promql = confined.prettify()
    # What is sent is what was checked: parse the printed text again and check every
    # selector carries exactly this service's namespace and service.
    final = pp.parse(promql)
    sent = _walk_checked(final, namespace, service)
    for vs in sent:
        keys = set(map(_key, vs.matchers.matchers))
        if (
            not {
                (_EQUAL, NAMESPACE_LABEL, namespace),
                (_EQUAL, SERVICE_LABEL, service),
            }
            <= keys
        ):
            raise QueryRefused(f"{FIELD}: a selector could not be confined; simplify it")
    if len(sent) != len(selectors):
        raise QueryRefused(f"{FIELD}: the confined query reads differently; simplify it")
    return ConfinedQuery(promql, namespace, service, len(sent))


@lru_cache(maxsize=4096)
def confine_override(
    template: str, *, namespace: str, service: str, model: str, window: str
) -> ConfinedQuery:
    """Fill the template's placeholders (promql.render_template) and confine the result.
    Cached: the spec changes far less often than it is evaluated."""
    try:
        query = render_template(
            template, namespace=namespace, service=service, model=model, window=window
        )
    except (TemplateError, ValueError) as exc:
        raise QueryRefused(f"{FIELD}: {exc}") from None
    return confine(query, namespace=namespace, service=service)
