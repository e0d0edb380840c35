"""An S3-compatible server that enforces authentication, for the tests: S3Proxy (Maven Central,
resolved by hack/install-s3proxy.sh) on an in-memory backend. It refuses unsigned requests,
wrong signatures, a pre-signed URL used for another key or verb, and expired pre-signed URLs
(hack/README.md: why this one)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .binaries import VERSIONS_FILE, cache_dir

INSTALL_SCRIPT = "hack/install-s3proxy.sh"


def _version() -> str:
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.startswith("S3PROXY_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"{VERSIONS_FILE}: no S3PROXY_VERSION")


def classpath() -> str:
    path = cache_dir() / f"s3proxy-{_version()}" / "classpath"
    if not path.is_file():
        raise RuntimeError(f"S3Proxy is not installed ({path} missing): run {INSTALL_SCRIPT}")
    return path.read_text().strip()


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running S3Proxy with one identity (the store's keys, made up per server)."""

    ip: str = "127.0.0.1"
    access_key: str = field(default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The store's keys as the operator's environment holds them."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> S3Server:
        self.port = self.port or _free_port(self.ip)
        work = Path(tempfile.mkdtemp(prefix="s3proxy-"))
        conf = work / "s3proxy.conf"
        conf.write_text("\n".join([
            f"s3proxy.endpoint=http://{self.ip}:{self.port}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self.access_key}",
            f"s3proxy.credential={self.secret_key}",
            "jclouds.provider=transient",
            "jclouds.identity=unused",
            "jclouds.credential=unused",
        ]) + "\n")
        conf.chmod(0o600)
        self.log_path = work / "s3proxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["java", "-Xmx256m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath(),
                 "org.gaul.s3proxy.Main", "--properties", str(conf)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LOG_LEVEL": "warn"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"S3Proxy exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.ip, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"S3Proxy did not listen on {self.endpoint} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, key: str | None = None, secret: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=key or self.access_key, aws_secret_access_key=secret or self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          request_checksum_calculation="when_required", response_checksum_validation="when_required"),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
