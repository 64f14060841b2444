"""The cluster's own network namespace, where pod addresses live and are served.

Kubernetes refuses loopback addresses in Endpoints and EndpointSlices, so pods need real
addresses (kwok hands them out from POD_CIDR), and traffic to such addresses must stay off
the host's networks. The harness therefore creates one named network namespace per cluster
state directory, makes the whole POD_CIDR local on that namespace's own `lo` (an "AnyIP"
route: any address in it can be bound and dialled there, and nowhere else), and runs inside
it every process that talks to pods: the per-pod Tritons, Prometheus, load generators.
Nothing is routed from the root namespace to those addresses.

The root namespace and the pod network meet only through Unix-socket bridges (socat, from
Debian), each a pair of detached processes with pid files in the state directory:

- `bridge_in(port)`: 127.0.0.1:port of the root namespace (the API server) is reachable
  inside the pod network at 127.0.0.1:port, so the same kubeconfig works on both sides;
- `bridge_out(port)`: 127.0.0.1:port inside the pod network (Prometheus) is reachable on
  the root namespace's 127.0.0.1:port, for the operator, tests and the user's browser.

Code that sends traffic to a pod address calls `require_inside(address)` first: outside the
pod network it raises instead of dialling.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from e2e import procs

POD_CIDR = "10.244.0.0/16"
NETNS_DIR = Path("/run/netns")
SOCAT = "socat"


class PodNetworkError(RuntimeError):
    """The pod network cannot be created or used here; the message says why and the fix."""


def _log(message: str) -> None:
    print(f"[e2e netns] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def is_pod_address(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(POD_CIDR)
    except ValueError:
        return False


def ensure_socat() -> str:
    """socat (Debian's package), installed with apt-get on first use."""
    found = shutil.which(SOCAT)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise PodNetworkError("socat is not on PATH; install it (apt-get install socat)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", SOCAT]):
        _log("running " + " ".join(argv[1:]) + " (first run only)")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PodNetworkError(f"{' '.join(argv)} failed: {done.stderr.strip()[-800:]}")
    found = shutil.which(SOCAT)
    if not found:
        raise PodNetworkError("apt-get installed socat but it is not on PATH")
    return found


def _netns_inode(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class PodNetwork:
    """One cluster's network namespace; cheap to construct, `ensure()` creates it."""

    name: str
    state_dir: Path

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> PodNetwork:
        resolved = Path(state_dir).resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
        return cls(f"ccs-{digest}", resolved)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    # -- the namespace -----------------------------------------------------------------
    @staticmethod
    def supported() -> str | None:
        """None when this machine can create network namespaces; else why not."""
        if os.geteuid() != 0:
            return "creating a network namespace needs root (ip netns add)"
        if shutil.which("ip") is None:
            return "the `ip` command (iproute2) is missing"
        return None

    def exists(self) -> bool:
        return _netns_inode(self.path) is not None

    def ensure(self) -> PodNetwork:
        """Create the namespace (idempotent): `lo` up, POD_CIDR local on it."""
        why = self.supported()
        if why:
            raise PodNetworkError(f"the pod network is unavailable: {why}")
        if not self.exists():
            done = _run(["ip", "netns", "add", self.name])
            if done.returncode != 0 and not self.exists():
                raise PodNetworkError(f"ip netns add {self.name} failed: {done.stderr.strip()}")
            _log(f"created network namespace {self.name} (pods: {POD_CIDR} on its lo)")
        for argv in (
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
            [
                "ip",
                "-n",
                self.name,
                "route",
                "replace",
                "local",
                POD_CIDR,
                "dev",
                "lo",
                "table",
                "local",
            ],
        ):
            done = _run(argv)
            if done.returncode != 0:
                raise PodNetworkError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return self

    def delete(self) -> bool:
        if not self.exists():
            return False
        done = _run(["ip", "netns", "delete", self.name])
        return done.returncode == 0

    def inside(self) -> bool:
        """Whether this process already runs in this network namespace."""
        here = _netns_inode("/proc/self/ns/net")
        return here is not None and here == _netns_inode(self.path)

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (unchanged when already inside)."""
        if self.inside():
            return list(argv)
        return ["ip", "netns", "exec", self.name, *argv]

    def require_inside(self, address: str) -> None:
        """Refuse to dial a pod address from anywhere but the pod network."""
        if is_pod_address(address) and not self.inside():
            raise PodNetworkError(
                f"refusing to connect to pod address {address} from outside the pod network "
                f"{self.name}; run the client through `python -m e2e exec -- ...`"
            )

    # -- bridges -----------------------------------------------------------------------
    def _socket(self, port: int) -> Path:
        return self.state_dir / "run" / f"bridge-{port}.sock"

    def _pidfile(self, port: int, side: str) -> Path:
        return self.state_dir / "run" / f"bridge-{port}-{side}.pid"

    def _log_file(self, port: int) -> Path:
        return self.state_dir / "logs" / f"bridge-{port}.log"

    def bridge_in(self, port: int) -> None:
        """Root 127.0.0.1:port reachable inside the pod network at 127.0.0.1:port."""
        sock = self._socket(port)
        self._bridge(
            port,
            root=[f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{port}"],
            netns=[f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            first="root",
        )

    def bridge_out(self, port: int) -> None:
        """127.0.0.1:port inside the pod network reachable on the root's 127.0.0.1:port."""
        sock = self._socket(port)
        self._bridge(
            port,
            root=[f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            netns=[f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:127.0.0.1:{port}"],
            first="netns",
        )

    def _bridge(self, port: int, root: list[str], netns: list[str], first: str) -> None:
        socat = ensure_socat()
        marker = str(self._socket(port))
        sides = {"root": [socat, *root], "netns": self.wrap([socat, *netns])}
        order = [first, "netns" if first == "root" else "root"]
        for side in order:
            pidfile = self._pidfile(port, side)
            if procs.read_pid(pidfile, SOCAT, marker=marker) is not None:
                continue
            if side == first:
                self._socket(port).unlink(missing_ok=True)  # a stale one from a crash
            proc = procs.start(sides[side], pidfile, self._log_file(port), self.state_dir)
            if side == first:
                self._wait_socket(self._socket(port), proc)
        _log(f"bridge for 127.0.0.1:{port} between the host and {self.name} is up")

    def _wait_socket(self, sock: Path, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if proc.poll() is not None:
                log = self._log_file(int(sock.stem.split("-")[1]))
                raise PodNetworkError(f"socat exited at startup ({proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise PodNetworkError(f"socat did not create {sock} in {timeout:.0f}s")
            time.sleep(0.05)

    def unbridge(self, port: int) -> bool:
        marker = str(self._socket(port))
        stopped = False
        for side in ("root", "netns"):
            stopped |= procs.stop(self._pidfile(port, side), SOCAT, marker=marker)
        self._socket(port).unlink(missing_ok=True)
        return stopped

    def bridged_ports(self) -> list[int]:
        run = self.state_dir / "run"
        if not run.is_dir():
            return []
        ports = {int(p.name.split("-")[1]) for p in run.glob("bridge-*-*.pid")}
        return sorted(ports)
