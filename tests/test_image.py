"""The operator's OCI image (release.image), built once per session and run: unpacked by
umoci, its entrypoint run in a chroot as its user; its layout and docker-archive read by
skopeo; its SBOM checked against the image's own package lists; operator/Dockerfile held
to the same entrypoint, user and Python."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from ccs_operator import __version__
from e2e.image_fixtures import ImageRoot
from release import oci, rootfs, sbom, wheels
from release.image import CMD, ENTRYPOINT, USER, Built

from helpers import ROOT

pytestmark = pytest.mark.image


def _skopeo(*args: str) -> dict:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout))


def test_layers_are_deterministic(tmp_path: Path) -> None:
    """Same tree, other mtimes and creation order on disk: the same bytes."""
    digests = []
    for attempt, names in enumerate((["b", "a", "c"], ["c", "a", "b"])):
        tree = tmp_path / f"tree{attempt}"
        (tree / "opt" / "x").mkdir(parents=True)
        for name in names:
            (tree / "opt" / "x" / name).write_text(f"file {name}\n")
            os.utime(tree / "opt" / "x" / name, (1000 + attempt, 1000 + attempt))
        os.link(tree / "opt" / "x" / "a", tree / "opt" / "x" / "hard")
        (tree / "opt" / "x" / "link").symlink_to("a")
        layer = oci.write_layer(tree, oci.walk(tree, "opt/x"), tmp_path / f"l{attempt}", 1234)
        digests.append((layer.blob.digest, layer.diff_id))
    assert digests[0] == digests[1]


def test_the_layout_holds_the_operator_image(operator_image: Built) -> None:
    info = _skopeo("inspect", f"oci:{operator_image.layout}:{operator_image.version}")
    assert info["Architecture"] == operator_image.arch and info["Os"] == "linux"
    assert info["Digest"] == operator_image.digest
    assert info["Labels"]["org.opencontainers.image.version"] == __version__
    config = _skopeo("inspect", "--config", f"oci:{operator_image.layout}:{operator_image.version}")
    process = config["config"]
    assert process["User"] == USER == "65532:65532"
    assert process["Entrypoint"] == ENTRYPOINT == ["ccs-operator"]
    assert process["Cmd"] == CMD == ["run"]
    assert (operator_image.out / "digest").read_text().strip() == operator_image.digest


def test_the_docker_archive_is_the_same_image(operator_image: Built) -> None:
    """docker load / kind load image-archive get the same layers and config."""
    layout_config = _skopeo(
        "inspect", "--config", f"oci:{operator_image.layout}:{operator_image.version}"
    )
    archive = f"docker-archive:{operator_image.archive}"
    archive_config = _skopeo("inspect", "--config", archive)
    assert archive_config["rootfs"]["diff_ids"] == layout_config["rootfs"]["diff_ids"]
    assert archive_config["config"]["Entrypoint"] == ["ccs-operator"]
    with tarfile.open(operator_image.archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.loads(member.read())
    assert entry["RepoTags"] == [operator_image.reference]
    assert [f"sha256:{name.removesuffix('.tar')}" for name in entry["Layers"]] == (
        layout_config["rootfs"]["diff_ids"]
    )


def test_umoci_unpacks_the_runtime_config_a_runtime_would_run(image_root: ImageRoot) -> None:
    spec = json.loads((image_root.bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["ccs-operator", "run"]
    assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (65532, 65532)
    assert any(e.startswith("PATH=/opt/ccs/bin:") for e in spec["process"]["env"])


def test_the_entrypoint_runs_as_the_non_root_user(image_root: ImageRoot) -> None:
    result = image_root.run("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__
    ids = [image_root.exec("id", flag).stdout.strip() for flag in ("-u", "-g", "-un")]
    assert ids == ["65532", "65532", "ccs"]
    # The virtualenv is root's: the operator's user cannot change its own code.
    touched = image_root.exec("touch", "/opt/ccs/lib/python3.11/site-packages/x")
    assert touched.returncode != 0 and "Permission denied" in touched.stderr


def test_render_in_the_image_equals_render_here(image_root: ImageRoot) -> None:
    inside = image_root.put(ROOT / "samples" / "claude-code.yaml", "/tmp/claude-code.yaml")
    result = image_root.run("render", "-f", inside)
    assert result.returncode == 0, result.stderr
    inside_host = str(ROOT / "samples" / "claude-code.yaml")
    here = subprocess.run(
        [sys.executable, "-m", "ccs_operator.cli", "render", "-f", inside_host],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == here.stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "Deployment" in kinds and "HorizontalPodAutoscaler" in kinds


def test_the_image_runs_debians_python_311_with_hash_based_byte_code(
    image_root: ImageRoot,
) -> None:
    version = image_root.exec("/opt/ccs/bin/python", "-c", "import sys; print(sys.version)")
    assert version.stdout.startswith("3.11."), version
    home = (image_root.rootfs / "opt/ccs/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in home  # Debian's interpreter, not a copy
    site = image_root.rootfs / "opt/ccs/lib/python3.11/site-packages"
    pycs = list(site.glob("ccs_operator/__pycache__/*.pyc"))
    assert pycs
    for pyc in pycs:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags & 0b1, f"{pyc.name} is timestamp-based"
    # No installer in the image: pip ran from its wheel in the chroot.
    assert not list(site.glob("pip*")) and not list(site.glob("setuptools*"))
    # apt's caches and lists and the build's logs are gone.
    for path in ("var/cache/apt/pkgcache.bin", "var/log/dpkg.log", "var/log/apt"):
        assert not (image_root.rootfs / path).exists(), path


def test_the_sbom_lists_every_package_of_the_image(
    operator_image: Built, image_root: ImageRoot
) -> None:
    document = json.loads(operator_image.sbom.read_text())
    assert document["spdxVersion"] == "SPDX-2.3"
    image, *packages = document["packages"]
    assert image["checksums"][0]["checksumValue"] == operator_image.digest.split(":")[1]
    purls = {ref["referenceLocator"] for p in packages for ref in p["externalRefs"]}
    debs = sbom.dpkg_packages(image_root.rootfs)
    assert {d["Package"] for d in debs} >= {"python3.11", "ca-certificates", "libc6"}
    assert len([p for p in purls if p.startswith("pkg:deb/")]) == len(debs)
    locked = wheels.read_lock(wheels.runtime_lock(operator_image.arch))
    for pin in locked:
        normalized = re.sub(r"[-_.]+", "-", pin.name).lower()
        assert f"pkg:pypi/{normalized}@{pin.version}" in purls
    assert f"pkg:pypi/ccs-operator@{__version__}" in purls
    related = {r["relatedSpdxElement"] for r in document["relationships"]}
    assert {p["SPDXID"] for p in packages} <= related


def _dockerfile() -> str:
    return (ROOT / "operator" / "Dockerfile").read_text()


def test_the_dockerfile_describes_the_same_image() -> None:
    """Same entrypoint, command, user, Debian suite and Python (Debian's python3.11)."""
    text = _dockerfile()
    assert f'ENTRYPOINT {json.dumps(ENTRYPOINT)}' in text
    assert f'CMD {json.dumps(CMD)}' in text
    assert f"USER {USER}" in text
    base = re.search(r"^ARG DEBIAN_IMAGE=(\S+)", text, re.MULTILINE)
    assert base and base.group(1).startswith(f"debian:{rootfs.SUITE}-slim")
    assert "python3.11" in text and "/opt/ccs" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "PATH=/opt/ccs/bin:$PATH" in text


def test_the_release_index_copies_with_its_digest(operator_image: Built, tmp_path: Path) -> None:
    """What the release workflow pushes: one index over the per-architecture layouts,
    copied by `skopeo copy --all --preserve-digests` (to a layout here, to ghcr there)."""
    merged, copy = tmp_path / "multi", tmp_path / "copy"
    version = operator_image.version
    digest = oci.merge_layouts(merged, [operator_image.layout], version)
    subprocess.run(
        [
            "skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests",
            f"oci:{merged}:{version}", f"oci:{copy}:{version}",
        ],
        check=True,
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{copy}:{version}"],
        capture_output=True, check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    (entry,) = json.loads(raw)["manifests"]
    assert entry["digest"] == operator_image.digest
    assert entry["platform"] == {"architecture": operator_image.arch, "os": "linux"}
