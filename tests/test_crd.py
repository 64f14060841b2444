"""The CRD: structure, descriptions, printer columns, CEL rules that compile as CEL."""

from __future__ import annotations

from typing import Any

from helpers import ROOT, crd_schema, load_crd


def _walk(schema: dict[str, Any], path: str = "") -> Any:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_names_and_scope() -> None:
    crd = load_crd()
    assert crd["spec"]["group"] == "serving.claudecode.io"
    assert crd["spec"]["names"]["shortNames"] == ["ccs"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Floor", "Max", "Queue-P99", "Phase", "Age"]


def test_every_spec_field_has_a_description() -> None:
    """So that `kubectl explain ccs.spec...` teaches the user."""
    spec = crd_schema()["properties"]["spec"]
    missing = [
        path for path, sub in _walk(spec, "spec")
        if "description" not in sub and not path.endswith("[]")
        and path.split(".")[-1] not in {"key", "operator", "value", "effect", "tolerationSeconds"}
    ]
    assert missing == []


def test_every_cel_rule_has_a_message_naming_a_field() -> None:
    rules = [
        (path, rule) for path, sub in _walk(crd_schema())
        for rule in sub.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 10
    for path, rule in rules:
        assert rule["message"], path
        assert "spec." in rule["message"] or "metadata.name" in rule["message"] or "dims" in rule[
            "message"
        ], rule


def test_chart_carries_a_byte_identical_copy() -> None:
    copies = list((ROOT / "chart").glob("*/crds/claudecodeservices.yaml"))
    assert copies, "chart/<name>/crds/claudecodeservices.yaml is missing"
    source = (ROOT / "crds" / "claudecodeservices.yaml").read_bytes()
    for copy in copies:
        assert copy.read_bytes() == source, f"{copy} differs from crds/; copy it again"
