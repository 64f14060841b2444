"""The real Triton on CPU, for tests, benchmarks and `serving_image/run-local`.

Runs the `tritonserver` binary that PyPI's `nvidia-pytriton` ships (with its Python backend
and the backend stub built for this interpreter), bound to 127.0.0.1 only, with the flags the
operator passes in production (render.triton_args: metrics on, summary latencies, strict
readiness, exit on error) and the config.pbtxt the operator renders. Two things differ from a
GPU pod, and `LocalTriton.for_service` says so in `notes`:

- instance groups of KIND_GPU become KIND_CPU (same count): there is no GPU here;
- a model whose platform is not `python` (e.g. pytorch_libtorch: pytriton ships no libtorch
  backend) is served by the Python-backend sample model under the same config, with
  `platform` replaced by `backend: "python"`. Inputs, outputs, batching, queue policy,
  instance counts and warm-up stay exactly as rendered.

API (small on purpose):

    with LocalTriton.for_service(ccs) as triton:       # ccs: ClaudeCodeService
        triton.http_url, triton.grpc_url              # "127.0.0.1:<port>" (tritonclient form)
        triton.metrics_url                            # "http://127.0.0.1:<port>/metrics"
        triton.notes                                  # what differs from production
        triton.is_model_ready("claude_code")
        triton.metric_values("nv_inference_count")   # {labels: value}
        triton.log_tail()

    LocalTriton(model_store, server_args=..., http_port=0, ...)  # an assembled repository

Ports default to free ones picked at start. `start()` waits for /v2/health/ready up to
`startup_timeout_s` and raises `TritonStartError` with the server log tail if the server
exits or is not ready by then (a missing library otherwise makes Triton hang). The server
is tied to the thread that started it (Linux parent-death signal), so a killed test run
leaves no orphan: start it from a thread that outlives it. `stop()` sends SIGTERM to the
server's process group (the server and its backend stubs), then SIGKILL.
Extra environment for the model (e.g. CCS_SAMPLE_BATCH_COST_MS) goes in `env`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from ccs_operator.core.api import ClaudeCodeService, parse_service
from ccs_operator.core.render import triton_args
from ccs_operator.core.tritonconfig import build_model_config

from . import SAMPLE_MODEL_DIR
from .loader import assemble

LOOPBACK = "127.0.0.1"


class TritonStartError(RuntimeError):
    """tritonserver did not become ready; the message carries the log tail."""


@dataclass(frozen=True)
class TritonDist:
    """The pieces of nvidia-pytriton's Triton distribution this runner uses."""

    binary: Path
    python_backend: Path  # directory with libtriton_python.so
    stub: Path  # triton_python_backend_stub for this interpreter's version
    libs: Path  # nvidia_pytriton.libs: libtritonserver and its dependencies

    @classmethod
    def find(cls) -> TritonDist:
        try:
            import pytriton
        except ImportError:
            raise TritonStartError(
                "nvidia-pytriton is not installed: `pip install -e '.[test]'` provides the "
                "tritonserver binary"
            ) from None
        root = Path(pytriton.__file__).resolve().parent
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = cls(
            binary=root / "tritonserver" / "bin" / "tritonserver",
            python_backend=root / "tritonserver" / "backends" / "python",
            stub=root
            / "tritonserver"
            / "python_backend_stubs"
            / version
            / "triton_python_backend_stub",
            libs=root.parent / "nvidia_pytriton.libs",
        )
        for path in (dist.binary, dist.python_backend / "libtriton_python.so", dist.stub):
            if not path.exists():
                raise TritonStartError(f"nvidia-pytriton is incomplete: {path} is missing")
        return dist


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def server_environment(dist: TritonDist, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment under which tritonserver and the Python backend stub find their libraries.

    The stub embeds libpython: it must load the libpython of *this* interpreter (numpy in
    this environment is built for it), and import this environment's site-packages.
    """
    env = dict(os.environ)
    lib_dirs = [str(dist.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        lib_dirs.append(str(libdir))
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    python_path = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if env.get("PYTHONPATH"):
        python_path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = ":".join(dict.fromkeys(python_path))
    # The stub's embedded interpreter runs isolated (PYTHONPATH is ignored) and finds its
    # prefix from the first `python` on PATH: this environment's, so its numpy is importable.
    env["PATH"] = f"{Path(sys.exec_prefix) / 'bin'}:{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def cpu_model_config(config: pb.ModelConfig) -> tuple[pb.ModelConfig, list[str]]:
    """A rendered ModelConfig adapted to a CPU-only Triton (in place); and notes saying how."""
    notes: list[str] = []
    for group in config.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_GPU:
            group.kind = pb.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
            notes.append(
                f"instance group KIND_GPU x{group.count} runs as KIND_CPU x{group.count} "
                "(no GPU locally; production keeps KIND_GPU)"
            )
    if config.platform:
        notes.append(
            f"platform {config.platform} is served by the Python-backend sample model "
            "(nvidia-pytriton ships only the Python backend); inputs, outputs, batching, "
            "queue policy, instances and warm-up are as rendered"
        )
        config.platform = ""
        config.backend = "python"
    return config, notes


def local_model_config(ccs: ClaudeCodeService) -> tuple[pb.ModelConfig, list[str]]:
    """The operator's ModelConfig for `ccs`, adapted to a CPU-only Triton; and notes saying how."""
    return cpu_model_config(build_model_config(ccs.spec))


def local_source(repository: str, python_model: bool) -> tuple[str, list[str]]:
    """Where model files come from locally for `repository`; a note when it is substituted.

    A local directory holding a Python-backend model is served as is; anything else (an
    object store, a PVC, a platform this Triton lacks) by the sample model.
    """
    path = repository.removeprefix("file://")
    if python_model and path.startswith("/") and Path(path).is_dir():
        return repository, []
    return str(SAMPLE_MODEL_DIR), [
        f"model files from the sample model {SAMPLE_MODEL_DIR.name} "
        f"({repository} is not a local Python-backend model)"
    ]


def local_repository(ccs: ClaudeCodeService, repository: str | None) -> tuple[str, list[str]]:
    """Which repository to load from locally, and a note when it is not spec.model.repository."""
    if repository is not None:
        given = ccs.spec.model.repository
        return repository, [f"model files from {repository} (given), not {given}"]
    return local_source(ccs.spec.model.repository, ccs.spec.model.platform == "python")


def prepare_model_store(
    ccs: ClaudeCodeService, store: Path, repository: str | None = None
) -> list[str]:
    """Assemble `store` as the model-loader init container would; return the local notes."""
    config, notes = local_model_config(ccs)
    source, source_notes = local_repository(ccs, repository)
    config_path = store.parent / f"{store.name}.config.pbtxt"
    config_path.write_text(text_format.MessageToString(config))
    assemble(source, ccs.spec.model.name, config_path, store)
    return notes + source_notes


class LocalTriton:
    """A running tritonserver on loopback; see the module docstring."""

    def __init__(
        self,
        model_store: Path,
        *,
        server_args: Sequence[str] = (),
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 120.0,
        notes: Sequence[str] = (),
        host: str = LOOPBACK,
    ) -> None:
        self.model_store = Path(model_store)
        self.host = host
        self.server_args = list(server_args)
        self._ports = (http_port, grpc_port, metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.notes = list(notes)
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._owned: list[Path] = []  # temporary directories removed on stop()
        self.log_path: Path | None = None

    @classmethod
    def for_service(
        cls,
        ccs: ClaudeCodeService | Mapping[str, Any] | Path | str,
        *,
        repository: str | None = None,
        **kwargs: Any,
    ) -> LocalTriton:
        """A server for one ClaudeCodeService (object, manifest dict or YAML file path)."""
        if isinstance(ccs, (str, Path)):
            import yaml

            ccs = parse_service(yaml.safe_load(Path(ccs).read_text()))
        elif not isinstance(ccs, ClaudeCodeService):
            ccs = parse_service(ccs)
        root = Path(tempfile.mkdtemp(prefix="ccs-store-"))
        notes = prepare_model_store(ccs, root / "models", repository)
        server = cls(
            root / "models",
            server_args=triton_args(ccs.spec),
            notes=[*notes, *kwargs.pop("notes", ())],
            **kwargs,
        )
        server._owned.append(root)
        return server

    # -- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def serves_metrics(self) -> bool:
        return "--allow-metrics=false" not in self.server_args

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    # -- lifecycle -------------------------------------------------------------------------
    def command(self, dist: TritonDist, backends: Path) -> list[str]:
        """The operator's arguments with local ports, loopback binding and the backend dir."""
        replaced = ("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")
        kept = [a for a in self.server_args if not a.startswith(replaced)]
        if not any(a.startswith("--metrics-config=summary_latencies") for a in kept):
            kept.append("--metrics-config=summary_latencies=true")
        return [
            str(dist.binary),
            f"--model-repository={self.model_store}",
            *kept,
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--backend-directory={backends}",
            # Unique shared-memory names: several servers may run on one machine.
            f"--backend-config=python,shm-region-prefix-name=ccs{os.getpid()}x{secrets.token_hex(4)}",
            "--exit-timeout-secs=10",
        ]

    def start(self) -> LocalTriton:
        """Launch and wait until ready (raises TritonStartError with the log tail)."""
        self.launch()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(keep_files=True)
            raise
        return self

    def launch(self) -> LocalTriton:
        """Start the process and return at once; `ready()` says when it serves."""
        if self._proc is not None:
            raise RuntimeError("already started")
        dist = TritonDist.find()
        self._workdir = Path(tempfile.mkdtemp(prefix="ccs-triton-"))
        self._owned.append(self._workdir)
        backends = self._workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(dist.python_backend / name, python_backend / name)
        shutil.copy2(dist.stub, python_backend / "triton_python_backend_stub")
        spare = iter(free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (
            port or next(spare) for port in self._ports
        )
        argv = self.command(dist, backends)
        self.log_path = self._workdir / "tritonserver.log"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(dist, self.env),
                cwd=self._workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def ready(self) -> bool:
        """One readiness probe: GET /v2/health/ready answered 200."""
        return self.running and _http_status(f"http://{self.http_url}/v2/health/ready") == 200

    @property
    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {code} before it was ready\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            # Triton starts its metrics endpoint after HTTP: "ready" means both answer.
            if _http_status(url) == 200 and (
                not self.serves_metrics or _http_status(self.metrics_url) == 200
            ):
                return
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver not ready on {url} after {self.startup_timeout_s:.0f}s "
                    "(a missing library or backend makes it hang)\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, keep_files: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Our own child leads its own session: its group is the server and its stubs.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # Stubs left behind by a crashed server would keep shared memory.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, timeout=10)
        if not keep_files:
            for path in self._owned:
                shutil.rmtree(path, ignore_errors=True)
            self._owned.clear()

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- inspection ------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def is_model_ready(self, model: str) -> bool:
        return _http_status(f"http://{self.http_url}/v2/models/{model}/ready") == 200

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())

    def metric_values(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample of metric `name` (exact sample name), keyed by sorted labels."""
        return parse_metrics(self.metrics_text()).get(name, {})


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text exposition -> {sample name: {sorted labels: value}}, names as written.

    (prometheus_client's parser renames counters to *_total; Triton's are not.)
    """
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        key = tuple(sorted(_LABEL_RE.findall(labels or "")))
        samples.setdefault(name, {})[key] = float(value)
    return samples


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no process of the group is left (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the starting thread dies (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`serving_image/run-local -f ccs.yaml`: serve one ClaudeCodeService until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="run-local",
        description="Run the real tritonserver (from nvidia-pytriton) on CPU with the "
        "config.pbtxt the operator renders for a ClaudeCodeService.",
    )
    parser.add_argument("-f", "--file", required=True, type=Path, help="ClaudeCodeService YAML")
    parser.add_argument("--http-port", type=int, help="default: spec.ports.http (8000)")
    parser.add_argument("--grpc-port", type=int, help="default: spec.ports.grpc (8001)")
    parser.add_argument("--metrics-port", type=int, help="default: spec.ports.metrics (8002)")
    parser.add_argument(
        "--repository", help="model files to serve instead of spec.model.repository"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to become ready")
    args = parser.parse_args(argv)
    import yaml

    from ccs_operator.core.api import SpecError

    try:
        ccs = parse_service(yaml.safe_load(args.file.read_text()))
    except (OSError, yaml.YAMLError, SpecError) as exc:
        print(f"run-local: {args.file}: {exc}", file=sys.stderr)
        return 2
    ports = ccs.spec.ports
    try:
        server = LocalTriton.for_service(
            ccs,
            repository=args.repository,
            http_port=args.http_port or ports.http,
            grpc_port=args.grpc_port or ports.grpc,
            metrics_port=args.metrics_port or ports.metrics,
            startup_timeout_s=args.timeout,
        )
    except Exception as exc:  # the loader's message names the path or field
        print(f"run-local: cannot assemble the model repository: {exc}", file=sys.stderr)
        return 2
    print(f"run-local: {ccs.name}: model {ccs.spec.model.name}, config rendered by ccs-operator")
    for note in server.notes:
        print(f"run-local: LOCAL ONLY: {note}")

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # Everything from here is inside one try: a SIGTERM that lands while the server starts
    # or while a line is printed stops it as cleanly as one that lands in the wait.
    try:
        try:
            server.start()
        except TritonStartError as exc:
            print(f"run-local: {exc}", file=sys.stderr)
            return 1
        print(
            f"run-local: ready: http://{server.http_url}  grpc {server.grpc_url}  "
            f"{server.metrics_url}"
        )
        print(f"run-local: server log {server.log_path}; Ctrl-C stops")
        while server.running:
            time.sleep(0.5)
        print(f"run-local: tritonserver exited\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run-local: stopping")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
