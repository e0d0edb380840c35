"""The real node's OCI archives (kubetest.nodeimages): valid layout, reproducible, named."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from kubetest.nodeimages import FileEntry, oci_archive


def _read(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_archive_is_an_oci_layout_whose_digests_match(tmp_path: Path) -> None:
    entries = [FileEntry("bin", directory=True), FileEntry("bin/tool", 0o755, data=b"#!/bin/sh\necho hi\n"),
               FileEntry("bin/alias", link="tool")]
    digest = oci_archive("localhost/x/tool:t1", entries, {"Cmd": ["/bin/tool"]}, tmp_path / "a.tar")
    files = _read(tmp_path / "a.tar")
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    desc = index["manifests"][0]
    assert desc["digest"] == digest
    assert desc["annotations"]["io.containerd.image.name"] == "localhost/x/tool:t1"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "t1"
    manifest = json.loads(files["blobs/sha256/" + digest.split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]]
    # Uncompressed layer: its diff_id is its own digest.
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["config"]["Cmd"] == ["/bin/tool"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/tool"].mode == 0o755 and members["bin/alias"].linkname == "tool"


def test_same_inputs_give_the_same_digest(tmp_path: Path) -> None:
    entries = [FileEntry("f", 0o644, data=b"x")]
    first = oci_archive("localhost/x/f:1", entries, {}, tmp_path / "1.tar")
    second = oci_archive("localhost/x/f:1", list(reversed(entries)), {}, tmp_path / "2.tar")
    other = oci_archive("localhost/x/f:1", [FileEntry("f", 0o644, data=b"y")], {}, tmp_path / "3.tar")
    assert first == second != other
