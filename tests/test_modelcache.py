"""The node-local model cache: hits, misses, refetch of damaged entries, eviction, one fill
per node under concurrency."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from serving_image.modelcache import NodeCache, cache_key, link_tree

FILES = {"1/model.pt": b"x" * 1000, "1/extra/tokenizer.json": b"{}", "2/model.pt": b"y" * 500}


def _populate(calls: list[Path], files: dict[str, bytes] = FILES):
    def populate(target: Path) -> None:
        calls.append(target)
        for relative, data in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    return populate


def _read(entry: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(entry)): p.read_bytes() for p in sorted(entry.rglob("*")) if p.is_file()
    }


def test_first_use_misses_and_fills_later_uses_hit_without_fetching(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 10_000)
    calls: list[Path] = []
    entry, first = cache.get("k1", _populate(calls))
    assert first.outcome == "miss" and first.bytes == 1502 and len(calls) == 1
    assert _read(entry) == FILES
    entry2, second = cache.get("k1", _populate(calls))
    assert second.outcome == "hit" and second.bytes == 1502
    assert entry2 == entry and len(calls) == 1, "a hit never fetches"
    assert not list((tmp_path / "cache").glob(".fill-*")), "no partial fill left behind"


@pytest.mark.parametrize("damage", ["truncate", "alter", "remove", "extra", "no-manifest"])
def test_a_damaged_or_partial_entry_is_refetched_never_served(tmp_path: Path, damage: str) -> None:
    cache = NodeCache(tmp_path / "cache", 10_000)
    calls: list[Path] = []
    entry, _ = cache.get("k1", _populate(calls))
    target = entry / "1" / "model.pt"
    if damage == "truncate":
        target.write_bytes(b"x" * 10)
    elif damage == "alter":
        target.write_bytes(b"z" * 1000)  # same size, other content: only the sha256 tells
    elif damage == "remove":
        target.unlink()
    elif damage == "extra":
        (entry / "1" / "stray.bin").write_bytes(b"?")
    else:
        cache.manifest_path("k1").unlink()  # as a pod killed mid-fill leaves it
    entry, outcome = cache.get("k1", _populate(calls))
    assert outcome.outcome == "refetch" and len(calls) == 2
    assert _read(entry) == FILES


def test_eviction_removes_least_recently_used_entries_to_fit_the_limit(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 3200)  # two entries of 1502 bytes fit, three do not
    calls: list[Path] = []
    for key in ("a", "b"):
        cache.get(key, _populate(calls))
    past = time.time() - 100
    os.utime(cache.manifest_path("a"), (past, past))
    os.utime(cache.manifest_path("b"), (past - 50, past - 50))
    cache.get("a", _populate(calls))  # a hit: "a" is now the most recently used
    _, outcome = cache.get("c", _populate(calls))
    assert outcome.outcome == "miss" and outcome.evicted == ("b",)
    assert set(cache.usage()) == {"a", "c"}
    assert sum(size for size, _ in cache.usage().values()) <= cache.limit_bytes
    assert not cache.entry_path("b").exists()


def test_an_entry_over_the_limit_alone_is_still_served(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 100)
    entry, outcome = cache.get("big", _populate([]))
    assert outcome.outcome == "miss" and outcome.evicted == ()
    assert _read(entry) == FILES


def test_an_entry_locked_by_another_loader_is_not_evicted(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 2000)
    cache.get("a", _populate([]))
    with cache._lock("a"):  # another pod's loader is reading "a"
        other = NodeCache(tmp_path / "cache", 2000)
        _, outcome = other.get("b", _populate([]))
    assert outcome.evicted == ()
    assert {"a", "b"} <= set(cache.usage())


def _fill_in_process(args: tuple[str, str]) -> str:
    root, log = args
    cache = NodeCache(Path(root), 10_000)

    def populate(target: Path) -> None:
        with open(log, "a") as handle:
            handle.write("fill\n")
        time.sleep(0.5)  # a slow download: the other loaders arrive meanwhile
        _populate([])(target)

    entry, outcome = cache.get("shared", populate)
    assert _read(entry) == FILES
    return outcome.outcome


def test_concurrent_loaders_on_one_node_download_once(tmp_path: Path) -> None:
    log = tmp_path / "fills.log"
    log.touch()
    with multiprocessing.get_context("fork").Pool(4) as pool:
        outcomes = pool.map(_fill_in_process, [(str(tmp_path / "cache"), str(log))] * 4)
    assert log.read_text().count("fill") == 1
    assert sorted(outcomes) == ["hit", "hit", "hit", "miss"]


def test_the_key_moves_with_any_object_change() -> None:
    base = [("1/model.pt", 1000, "etag-a"), ("2/model.pt", 500, "etag-b")]
    key = cache_key("s3://models/m", "http://s3", base)
    assert key == cache_key("s3://models/m", "http://s3", list(reversed(base)))
    assert key != cache_key("s3://models/m", "http://s3", [base[0], ("2/model.pt", 500, "etag-c")])
    assert key != cache_key("s3://models/m", "http://s3", base[:1])
    assert key != cache_key("s3://models/other", "http://s3", base)
    assert key != cache_key("s3://models/m", "http://minio", base)


def test_linked_files_share_the_cache_inode_and_survive_eviction(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", 10_000)
    entry, _ = cache.get("k1", _populate([]))
    store = tmp_path / "store"
    link_tree(entry, store)
    assert _read(store) == FILES
    assert (store / "1" / "model.pt").stat().st_ino == (entry / "1" / "model.pt").stat().st_ino
    cache._remove("k1")
    assert _read(store) == FILES, "a running pod keeps its model when the entry is evicted"


def test_a_zero_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        NodeCache(Path("/nonexistent"), 0)
