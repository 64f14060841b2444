"""The operator's OCI image, built once per session and run from its own filesystem.

`operator_image` is release.image.cached_build(): a build keyed by everything the image is
made of, kept under ~/.cache/ccs-operator/image/builds/, so only the first session after a
change pays for it (about a minute with the Debian base cached, three without).
`image_root` unpacks it with umoci, as a runtime would, and runs its programs in a chroot
with the image config's user, environment and entrypoint, with /proc mounted and the
device nodes a runtime makes; the host's network (the local API server on 127.0.0.1) is
shared. `ImageOperator` is OperatorProcess run that way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from e2e.fixtures import Cluster
from e2e.operator_fixtures import OperatorProcess
from release import oci
from release.image import Built, cached_build, load_built

# What runc and crun create in /dev for every container.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "image: builds the operator's OCI image once per session (needs root)"
    )


class ImageRoot:
    """An unpacked image: its root filesystem, its config, and programs run inside it."""

    def __init__(self, built: Built, bundle: Path) -> None:
        self.built = built
        self.bundle = bundle
        self.rootfs = bundle / "rootfs"
        self.manifest, self.config = oci.read_image(built.layout, built.version)
        process = self.config["config"]
        self.user: str = process["User"]
        self.entrypoint: list[str] = process["Entrypoint"]
        self.cmd: list[str] = process["Cmd"]
        self.env = dict(item.split("=", 1) for item in process["Env"])
        self._mounted: list[Path] = []

    def prepare(self) -> None:
        """What a runtime provides: /proc, device nodes, a writable /tmp."""
        proc = self.rootfs / "proc"
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        self._mounted.append(proc)
        dev = self.rootfs / "dev"
        for name, (major, minor) in DEVICES.items():
            path = dev / name
            if not path.exists():
                os.mknod(path, 0o20666, os.makedev(major, minor))
                path.chmod(0o666)

    def release(self) -> None:
        for path in reversed(self._mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
        self._mounted.clear()

    def argv(self, args: Sequence[str] | None = None) -> list[str]:
        """chroot as the image's user, running its entrypoint with `args` (default: Cmd)."""
        command = [*self.entrypoint, *(self.cmd if args is None else args)]
        return ["chroot", f"--userspec={self.user}", str(self.rootfs), *command]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args),
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.rootfs,
        )

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Any program of the image (not the entrypoint), as the image's user."""
        argv = ["chroot", f"--userspec={self.user}", str(self.rootfs), *command]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)

    def put(self, source: Path, inside: str) -> str:
        """Copies a host file into the image's /tmp, readable by the image's user."""
        target = self.rootfs / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
        return inside


@pytest.fixture(scope="session")
def operator_image() -> Built:
    """The cached build of the current sources; $CCS_IMAGE_DIR: a finished build there
    (the release workflow tests the image `make image` built)."""
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (mmdebstrap and chroot)")
    directory = os.environ.get("CCS_IMAGE_DIR")
    if directory:
        return load_built(Path(directory))
    return cached_build()


@pytest.fixture(scope="session")
def image_root(
    operator_image: Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageRoot]:
    bundle = tmp_path_factory.mktemp("image") / "bundle"
    subprocess.run(
        [
            "umoci", "unpack",
            "--image", f"{operator_image.layout}:{operator_image.version}",
            str(bundle),
        ],
        check=True,
        capture_output=True,
    )
    root = ImageRoot(operator_image, bundle)
    root.prepare()
    try:
        yield root
    finally:
        root.release()
        shutil.rmtree(bundle, ignore_errors=True)


class ImageOperator(OperatorProcess):
    """`ccs-operator run` from the image's filesystem: its entrypoint, user and Python, the
    host's network; the cluster's kubeconfig is copied into the image's /tmp."""

    def __init__(self, image: ImageRoot, cluster: Cluster, log_dir: Path, **kwargs: Any) -> None:
        super().__init__(cluster, log_dir, **kwargs)
        self.image = image
        inside = f"/tmp/kubeconfig-{uuid.uuid4().hex[:6]}"
        self.kubeconfig = image.put(cluster.kubeconfig, inside)

    def start(self) -> ImageOperator:
        env = {k: v for k, v in self.env.items() if k.startswith("CCS_")}
        env = {**self.image.env, **env, "KUBECONFIG": self.kubeconfig}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.image.argv([*self.image.cmd, "--verbose"]),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.image.rootfs,
            )
        self.wait_healthy()
        return self


@pytest.fixture
def image_operator(
    image_root: ImageRoot, cluster: Cluster, ccs_crd: None, operator_logs: Path
) -> Iterator[Any]:
    """Starts operators from the image (all stopped after the test)."""
    started: list[ImageOperator] = []

    def start(namespaces: str, **env: str) -> ImageOperator:
        process = ImageOperator(
            image_root,
            cluster,
            operator_logs,
            namespaces=namespaces,
            lease=f"ccs-image-{uuid.uuid4().hex[:6]}",
            **env,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        with contextlib.suppress(Exception):
            process.stop()
