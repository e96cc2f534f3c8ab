from __future__ import annotations

from pathlib import Path

import pytest

from tailor.config import StorageConfig
from tailor.storage import StorageError, fetch_to_local, list_source_objects, open_store
from tests.conftest import TEST_BUCKET


def test_s3_store_round_trip_on_seaweedfs(s3_server, tmp_path: Path) -> None:
    storage = StorageConfig(endpoint_url=s3_server.endpoint_url)
    store = open_store(f"s3://{TEST_BUCKET}/storage-test", storage)
    local = tmp_path / "a.bin"
    local.write_bytes(b"x" * 1000)
    store.put_file(local, "runs/d/a.bin")
    store.put_bytes(b"{}", "latest.json")
    assert store.list_keys("runs/") == ["runs/d/a.bin"]
    assert store.get_bytes("latest.json") == b"{}"
    assert store.get_bytes("absent.json") is None
    found = list_source_objects(f"s3://{TEST_BUCKET}/storage-test/runs/*/*.bin", storage)
    assert [(o.uri, o.size) for o in found] == [(f"s3://{TEST_BUCKET}/storage-test/runs/d/a.bin", 1000)]
    assert fetch_to_local(found[0].uri, tmp_path / "cache", storage).read_bytes() == b"x" * 1000
    store.delete_keys(["runs/d/a.bin"])
    assert store.list_keys("runs/") == []


def test_s3_errors_name_the_uri(s3_server, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = StorageConfig(endpoint_url=s3_server.endpoint_url, max_attempts=1)
    store = open_store(f"s3://{TEST_BUCKET}/prefix", storage)
    with pytest.raises(StorageError, match=f"s3://{TEST_BUCKET}/prefix/k") as error:
        store.put_bytes(b"x", "k")
    assert "not-the-secret" not in str(error.value)


def test_local_store_writes_atomically_and_lists(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}", StorageConfig())
    store.put_bytes(b"1", "runs/2026-01-01/manifest.json")
    assert store.list_keys("runs/") == ["runs/2026-01-01/manifest.json"]
    assert not [p for p in tmp_path.rglob(".tmp-*")]
