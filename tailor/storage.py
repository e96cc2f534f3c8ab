"""Local folders and S3-compatible buckets behind one small interface (used by extract and publish).

Credentials come from the standard AWS chain (environment, profile); the endpoint from config or
AWS_ENDPOINT_URL. Nothing here logs keys or object contents.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

from tailor.config import StorageConfig


class StorageError(RuntimeError):
    """A read or write on a target that failed; the message names the URI."""


@dataclass(frozen=True)
class StoredObject:
    uri: str
    size: int
    fingerprint: str  # changes when the content is replaced: size and mtime locally, the ETag on S3


class ObjectStore(Protocol):
    root: str

    def uri(self, key: str) -> str: ...
    def put_file(self, local: Path, key: str) -> None: ...
    def put_bytes(self, data: bytes, key: str) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_keys(self, keys: list[str]) -> None: ...


def content_type(key: str) -> dict[str, str]:
    """The object's Content-Type from its name: S3 serves an object without one as binary data, so a
    browser would download report.html and the Data Docs instead of showing them, and skip their styles."""
    import mimetypes

    if key.endswith(".gz"):
        return {"ContentType": "application/gzip"}
    if key.endswith(".jsonl"):
        return {"ContentType": "application/jsonl"}
    if key.endswith(".parquet"):
        return {"ContentType": "application/vnd.apache.parquet"}
    guessed, _ = mimetypes.guess_type(key)
    return {"ContentType": guessed} if guessed else {}


# Published files are for other accounts (BI, campaign systems) to read, whatever the umask of the process
# that writes them (a run may set 077 for its private working files): modes are set explicitly.
PUBLISHED_FILE_MODE = 0o644
PUBLISHED_FOLDER_MODE = 0o755


class LocalStore:
    """A folder; writes land by rename so a reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self._root = root

    def uri(self, key: str) -> str:
        return f"file://{self._root / key}"

    def _make_folders(self, folder: Path) -> None:
        """Create the missing folders down to `folder`, each readable by others (mkdir obeys the umask)."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            if folder.parent == folder:
                break
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another upload thread made it
                continue
            os.chmod(path, PUBLISHED_FOLDER_MODE)

    def _write(self, key: str, write) -> None:
        path = self._root / key
        self._make_folders(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, PUBLISHED_FILE_MODE)  # mkstemp makes 0600
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, local: Path, key: str) -> None:
        with local.open("rb") as source:
            self._write(key, lambda handle: shutil.copyfileobj(source, handle, 8 << 20))

    def put_bytes(self, data: bytes, key: str) -> None:
        self._write(key, lambda handle: handle.write(data))

    def get_bytes(self, key: str) -> bytes | None:
        path = self._root / key
        return path.read_bytes() if path.exists() else None

    def list_keys(self, prefix: str) -> list[str]:
        base = self._root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self._root)) for p in base.rglob("*") if p.is_file())

    def delete_keys(self, keys: list[str]) -> None:
        folders = set()
        for key in keys:
            path = self._root / key
            path.unlink(missing_ok=True)
            folders.update(p for p in path.parents if p.is_relative_to(self._root) and p != self._root)
        # folders left empty go too (deepest first), so a removed attempt leaves no empty tree behind
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()


MAX_POOL_CONNECTIONS = 48


def s3_client(
    storage: StorageConfig, max_attempts: int | None = None, connect_timeout: float = 10, read_timeout: float = 60
):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=storage.endpoint_url or None,
        region_name=storage.region,
        config=Config(
            retries={"max_attempts": max_attempts or storage.max_attempts, "mode": "standard"},
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # uploads run several files at once, each in several parts
            max_pool_connections=MAX_POOL_CONNECTIONS,
        ),
    )


class S3Store:
    def __init__(self, bucket: str, prefix: str, storage: StorageConfig, client=None) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client or s3_client(storage)
        self._transfer = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=8)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, action):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return action()
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"{what} {self.uri(key)} failed: {error}") from error

    def put_file(self, local: Path, key: str) -> None:
        self._call(
            "upload to",
            key,
            lambda: self._client.upload_file(
                str(local), self.bucket, self._key(key), Config=self._transfer, ExtraArgs=content_type(key)
            ),
        )

    def put_bytes(self, data: bytes, key: str) -> None:
        self._call(
            "upload to",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **content_type(key)),
        )

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(f"read of {self.uri(key)} failed: {error}") from error
        return response["Body"].read()

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        full_prefix = self._key(prefix)

        def collect() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    keys.append(item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"])

        self._call("listing of", prefix, collect)
        return sorted(keys)

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self._call(
                "delete under",
                keys[start],
                lambda batch=batch: self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch}
                ),
            )


def open_store(target: str, storage: StorageConfig) -> ObjectStore:
    """`file:///abs/dir` or `s3://bucket/prefix`."""
    parsed = urlparse(target)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, storage)
    raise StorageError(f"unsupported target {target!r}: use file:// or s3://")


# The target check must answer in seconds: one retry per request and a short connect timeout (the defaults,
# made for uploads, spend minutes on an endpoint that does not answer). The task that calls it retries once.
PROBE_ATTEMPTS = 2
PROBE_CONNECT_TIMEOUT = 3
PROBE_READ_TIMEOUT = 5  # an endpoint that accepts but never answers fails the check in seconds too


def describe_s3_error(error: Exception, bucket: str, endpoint: str | None = None) -> str:
    """A one-line reason for a failed S3 call, without the request details."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if is_connection_error(error):
        return f"cannot connect to {endpoint or 'the S3 endpoint'} (is the endpoint right and the server up?)"
    if isinstance(error, NoCredentialsError):
        return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            return f"bucket {bucket!r} does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return f"credentials refused ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return "access denied: the credentials may not write there"
        return f"{code or 'error'}: {error.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_connection_error(error: BaseException) -> bool:
    """A failure that may pass on a second try (the endpoint did not answer), unlike a refusal."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    cause = error.__cause__ if isinstance(error, StorageError) else error
    return isinstance(cause, EndpointConnectionError | ConnectTimeoutError | BotoConnectionError)


def check_target(target: str, storage: StorageConfig) -> None:
    """Write and delete a small probe object under the target, or raise one StorageError line naming the
    target and why (bucket missing, access denied, no answer): before a run spends an hour computing."""
    parsed = urlparse(target)
    probe = f".tailor-probe-{secrets.token_hex(6)}"
    if parsed.scheme == "file":
        store = LocalStore(Path(parsed.netloc + parsed.path))
        try:
            store.put_bytes(b"tailor publish probe\n", probe)
            store.delete_keys([probe])
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise StorageError(f"publish target {target} is not writable: {reason}") from None
        return
    if parsed.scheme != "s3":
        raise StorageError(f"unsupported target {target!r}: use file:// or s3://")
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(
        storage, max_attempts=PROBE_ATTEMPTS, connect_timeout=PROBE_CONNECT_TIMEOUT, read_timeout=PROBE_READ_TIMEOUT
    )
    store = S3Store(parsed.netloc, parsed.path, storage, client=client)
    key = store._key(probe)
    try:
        # publish lists the target too (to remove superseded attempts), and a missing bucket shows here even
        # on servers that create a bucket on the first write to it
        client.list_objects_v2(Bucket=store.bucket, Prefix=key, MaxKeys=1)
        client.put_object(Bucket=store.bucket, Key=key, Body=b"tailor publish probe\n")
        client.delete_object(Bucket=store.bucket, Key=key)
    except (BotoCoreError, ClientError) as error:
        reason = describe_s3_error(error, store.bucket, client.meta.endpoint_url)
        # `from error` keeps the cause for the retry condition; the message alone is what a person reads
        raise StorageError(f"publish target {target} failed its write check: {reason}") from error


def list_source_objects(pattern: str, storage: StorageConfig) -> list[StoredObject]:
    """Files matching a local glob or an `s3://bucket/prefix/*.csv` pattern, sorted by URI."""
    if not pattern.startswith("s3://"):
        from glob import glob

        found_local = []
        for path in sorted(glob(pattern)):
            if os.path.isfile(path):
                stat = os.stat(path)
                found_local.append(StoredObject(path, stat.st_size, f"{stat.st_size}:{stat.st_mtime_ns}"))
        return found_local
    parsed = urlparse(pattern)
    key_pattern = parsed.path.lstrip("/")
    literal_prefix = key_pattern.split("*")[0].split("?")[0].split("[")[0]
    client = s3_client(storage)
    found: list[StoredObject] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=parsed.netloc, Prefix=literal_prefix
        ):
            for item in page.get("Contents", []):
                if fnmatch.fnmatchcase(item["Key"], key_pattern):
                    found.append(
                        StoredObject(
                            f"s3://{parsed.netloc}/{item['Key']}",
                            int(item["Size"]),
                            str(item.get("ETag", "")),
                        )
                    )
    except Exception as error:
        raise StorageError(f"listing of {pattern} failed: {error}") from error
    return sorted(found, key=lambda o: o.uri)


def fetch_to_local(uri: str, cache_dir: Path, storage: StorageConfig) -> Path:
    """A local path for a source file: itself if local, else a download into `cache_dir`."""
    if not uri.startswith("s3://"):
        return Path(uri)
    parsed = urlparse(uri)
    local = cache_dir / parsed.netloc / parsed.path.lstrip("/")
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client(storage).download_file(parsed.netloc, parsed.path.lstrip("/"), str(local))
    except Exception as error:
        raise StorageError(f"download of {uri} failed: {error}") from error
    return local


def browser_link(uri: str, storage: StorageConfig) -> str:
    """Where a person opens a published object: a file's local path; for S3 the object's page in the AWS
    console, or its path-style URL on an S3-compatible endpoint (which serves it to a signed request or a
    public bucket only: `presigned_link` gives one anyone can open for a while)."""
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    if not uri.startswith("s3://"):
        return uri
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{quote(key)}"
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key, safe='')}"


def presigned_link(uri: str, storage: StorageConfig, seconds: int) -> str:
    """A URL that opens the S3 object without credentials until it expires in `seconds`."""
    parsed = urlparse(uri)
    return s3_client(storage).generate_presigned_url(
        "get_object", Params={"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}, ExpiresIn=seconds
    )
