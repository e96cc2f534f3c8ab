from __future__ import annotations

import os
from pathlib import Path

import pytest

from tailor.config import StorageConfig
from tailor.storage import (
    StorageError,
    browser_link,
    fetch_to_local,
    list_source_objects,
    open_store,
    presigned_link,
)
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


def test_s3_objects_carry_the_content_type_a_browser_needs(s3_server, tmp_path: Path) -> None:
    import boto3

    store = open_store(f"s3://{TEST_BUCKET}/types-test", StorageConfig(endpoint_url=s3_server.endpoint_url))
    page = tmp_path / "report.html"
    page.write_text("<!doctype html><p>hi</p>")
    store.put_file(page, "run/report.html")  # the report and the Data Docs: shown, not downloaded
    store.put_bytes(b"body {}", "run/data_docs/raw/static/vendor/bootstrap.min.css")
    store.put_bytes(b"PAR1", "run/recommendations/part-0000.parquet")
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    types = {
        key: client.head_object(Bucket=TEST_BUCKET, Key=f"types-test/{key}")["ContentType"]
        for key in ("run/report.html", "run/data_docs/raw/static/vendor/bootstrap.min.css",
                    "run/recommendations/part-0000.parquet")
    }  # fmt: skip
    assert types == {
        "run/report.html": "text/html",
        "run/data_docs/raw/static/vendor/bootstrap.min.css": "text/css",
        "run/recommendations/part-0000.parquet": "application/vnd.apache.parquet",
    }


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


def test_the_target_check_writes_and_removes_a_probe(s3_server, tmp_path: Path) -> None:
    from tailor.storage import check_target

    storage = StorageConfig(endpoint_url=s3_server.endpoint_url)
    check_target(f"s3://{TEST_BUCKET}/probe-test", storage)
    assert open_store(f"s3://{TEST_BUCKET}/probe-test", storage).list_keys("") == []
    check_target(f"file://{tmp_path / 'new'}", storage)
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


def test_a_bad_target_fails_in_seconds_with_one_line(s3_server, tmp_path: Path, monkeypatch) -> None:
    import time

    from tailor.s3server import free_port
    from tailor.storage import check_target

    def failure(target: str, storage: StorageConfig) -> str:
        started = time.monotonic()
        with pytest.raises(StorageError) as error:
            check_target(target, storage)
        assert time.monotonic() - started < 10
        message = str(error.value)
        assert message.startswith(f"publish target {target} ") and "\n" not in message
        return message

    storage = StorageConfig(endpoint_url=s3_server.endpoint_url)
    assert "bucket 'no-such-bucket' does not exist" in failure("s3://no-such-bucket/p", storage)
    nobody = StorageConfig(endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert "connect" in failure(f"s3://{TEST_BUCKET}/p", nobody).lower()
    (tmp_path / "a-file").write_text("")
    assert "not writable: Not a directory" in failure((tmp_path / "a-file" / "out").as_uri(), storage)
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    if not os.access(read_only, os.W_OK):  # root may write anywhere
        assert "not writable: Permission denied" in failure(read_only.as_uri(), storage)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = failure(f"s3://{TEST_BUCKET}/p", storage)
    assert "credentials refused" in refused or "access denied" in refused
    assert "not-the-secret" not in refused


def test_a_person_gets_a_path_for_a_file_and_a_page_for_an_s3_object(monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert browser_link("file:///srv/my%20runs/report.html", StorageConfig()) == "/srv/my runs/report.html"
    assert browser_link("s3://bucket/p/runs/2026-11-21/report.html", StorageConfig()) == (
        "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=p%2Fruns%2F2026-11-21%2Freport.html"
    )
    compatible = StorageConfig(endpoint_url="http://127.0.0.1:8333/")
    assert browser_link("s3://tailor/runs/a b.html", compatible) == "http://127.0.0.1:8333/tailor/runs/a%20b.html"


def test_a_presigned_link_opens_the_object_without_credentials_until_it_expires(s3_server, tmp_path) -> None:
    import time
    import urllib.error
    import urllib.request

    storage = StorageConfig(endpoint_url=s3_server.endpoint_url)
    store = open_store(f"s3://{TEST_BUCKET}/links", storage)
    store.put_bytes(b"<html>the report</html>", "report.html")
    uri = f"s3://{TEST_BUCKET}/links/report.html"
    with urllib.request.urlopen(presigned_link(uri, storage, 60), timeout=10) as response:
        assert response.read() == b"<html>the report</html>"
    # the same object without a signature is refused: the link, not the bucket, grants the read
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(browser_link(uri, storage), timeout=10)
    expired = presigned_link(uri, storage, 1)
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(expired, timeout=10)
