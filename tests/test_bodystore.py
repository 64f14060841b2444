"""The services' store: compact JSON, a fresh copy on every read."""

from __future__ import annotations

import json

from ccs_operator.controllers.bodystore import BodyStore

KEY = ("ns", "svc")


def _body() -> dict:
    return {
        "apiVersion": "serving.claudecode.io/v1alpha1",
        "kind": "ClaudeCodeService",
        "metadata": {
            "name": "svc",
            "namespace": "ns",
            "uid": "u1",
            "generation": 3,
            "labels": {"team": "a"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"model": {"name": "m"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_a_stored_body_reads_back_without_managed_fields() -> None:
    store = BodyStore()
    store[KEY] = _body()
    expected = _body()
    del expected["metadata"]["managedFields"]
    assert store[KEY] == expected
    assert store.get(KEY) == expected and KEY in store and len(store) == 1 and [*store] == [KEY]
    assert store.stored_bytes() == len(json.dumps(expected, separators=(",", ":")))


def test_readers_get_copies_and_cannot_change_the_store() -> None:
    store = BodyStore()
    body = _body()
    store[KEY] = body
    body["spec"]["model"]["name"] = "changed by the writer after storing"
    first = store[KEY]
    first["status"]["conditions"].clear()
    meta = store.metadata(KEY)
    assert meta is not None
    meta["labels"]["team"] = "changed by a reader"
    assert store[KEY]["spec"]["model"]["name"] == "m"
    assert store[KEY]["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert store.metadata(KEY) == {
        "name": "svc", "namespace": "ns", "uid": "u1", "generation": 3, "labels": {"team": "a"}
    }


def test_deleting_forgets_body_and_metadata() -> None:
    store = BodyStore()
    store[KEY] = _body()
    assert store.pop(KEY)["metadata"]["uid"] == "u1"
    assert KEY not in store and store.metadata(KEY) is None and store.get(KEY) is None
