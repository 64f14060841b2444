"""Build the harness's binaries from the Go modules pinned under e2e/toolchain/.

Every program is compiled from source with the machine's Go toolchain; nothing is downloaded
but Go modules. The cluster's binaries (kube, etcd, kwok, helm) land together in
~/.cache/ccs-operator/bin/<k8s version>-<hash>/, where the hash covers their pinned modules,
the Go version and the build flags, so a change to any of them builds afresh and an
unchanged toolchain is reused at once. A binary with a directory of its own
(prometheus-operator) is keyed by its own module alone, so adding or bumping it never
rebuilds the cluster.

Prometheus embeds its web UI, which its Go module holds as sources only: they are built
with npm from the module's own package-lock.json (`npm ci`, then the workspaces upstream's
web/ui/build_ui.sh builds) and gzipped into a writable copy of the module, which the build
uses through a `replace` in a copy of toolchain/prometheus/go.mod (`-modfile`), with
upstream's `builtinassets` tag. cmd/go refuses overlays of files in the module cache, so
the copy is what lets go:embed see them.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from e2e.paths import TOOLCHAIN_DIR, bin_root

# The control-plane programs are symlinks to one multi-call binary (see toolchain/kube).
KUBE_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS = "github.com/prometheus/prometheus"
PROMETHEUS_ADAPTER = "sigs.k8s.io/prometheus-adapter"
# How often a long build says it is still alive, so CI logs never look hung.
_HEARTBEAT_S = 60.0
# The npm workspaces of a module's web/ui built for an embedded web UI, in order: the
# PromQL modules the UI imports, then the UI (Prometheus 3's; the old react-app, served
# only with --enable-feature=old-ui, is not built). Part of the binary's cache key.
WEB_UI_WORKSPACES = (
    "@prometheus-io/lezer-promql",
    "@prometheus-io/codemirror-promql",
    "@prometheus-io/mantine-ui",
)
# Where the built UI lies in web/ui/, and where the module serves it from (web/web.go).
_WEB_UI_DIST = "mantine-ui/dist"
_WEB_UI_STATIC = "static/mantine-ui"


class BuildError(RuntimeError):
    """A binary failed to build; the message names it and quotes the compiler."""


@dataclass(frozen=True)
class Binary:
    """One `go build` invocation."""

    name: str  # the file written to the bin dir
    module: str  # directory under e2e/toolchain/ holding its go.mod
    package: str  # what to build, relative to that module
    ldflags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())  # symlinks to the binary, for argv[0] dispatch
    # Set: built into bin/<own_dir>-<hash of its module alone>/. None: into the cluster's
    # shared directory (bin_dir()), whose hash covers every shared binary's module.
    own_dir: str | None = None
    tags: tuple[str, ...] = ()
    # Set: the module (a path go.mod requires) whose web/ui is built with npm and embedded.
    web_ui: str | None = None


def required_version(module: str, path: str) -> str:
    """The version of `path` that toolchain/<module>/go.mod requires."""
    text = (TOOLCHAIN_DIR / module / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(path)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise BuildError(f"toolchain/{module}/go.mod does not require {path}")
    return match.group(1)


def kubernetes_version() -> str:
    return required_version("kube", "k8s.io/kubernetes")


def prometheus_operator_version() -> str:
    """One pin for the operator binary and the CRDs the cluster installs (e2e.crds)."""
    return required_version("promoperator", PROMETHEUS_OPERATOR)


def prometheus_operator_source() -> Path:
    """The pinned prometheus-operator module's files (CRDs, RBAC), from the module cache."""
    return module_dir("promoperator", PROMETHEUS_OPERATOR)


def prometheus_version() -> str:
    """The Prometheus release toolchain/prometheus pins: its Go module v0.MMPP.x is release
    M.PP.x (v0.305.0 is Prometheus 3.5.0)."""
    module_version = required_version("prometheus", PROMETHEUS)
    match = re.fullmatch(r"v0\.(\d+)(\d\d)\.(\d+)", module_version)
    if not match:
        raise BuildError(f"cannot map {PROMETHEUS} {module_version} to a Prometheus release")
    return f"{int(match.group(1))}.{int(match.group(2))}.{match.group(3)}"


def prometheus_adapter_version() -> str:
    return required_version("adapter", PROMETHEUS_ADAPTER)


def _version_ldflags(package: str, version: str) -> list[str]:
    major, minor = version.lstrip("v").split(".")[:2]
    values = {"gitVersion": version, "gitMajor": major, "gitMinor": minor}
    values["gitTreeState"] = "clean"
    return [f"-X {package}.{key}={value}" for key, value in values.items()]


def binaries() -> list[Binary]:
    kube = kubernetes_version()
    # component-base serves the servers' /version; client-go's is what kubectl reports as
    # its own client version. Both default to v0.0.0-master without these.
    kube_flags = _version_ldflags("k8s.io/component-base/version", kube)
    kube_flags += _version_ldflags("k8s.io/client-go/pkg/version", kube)
    kwok = required_version("kwok", "sigs.k8s.io/kwok")
    helm = required_version("helm", "helm.sh/helm/v3")
    promop = prometheus_operator_version()
    prometheus = prometheus_version()
    adapter = prometheus_adapter_version()
    actionlint = required_version("actionlint", "github.com/rhysd/actionlint")
    return [
        Binary("kube", "kube", ".", tuple(kube_flags), KUBE_PROGRAMS),
        Binary("etcd", "etcd", "."),
        Binary(
            "kwok",
            "kwok",
            "sigs.k8s.io/kwok/cmd/kwok",
            (f"-X sigs.k8s.io/kwok/pkg/consts.Version={kwok.lstrip('v')}",),
        ),
        Binary(
            "helm",
            "helm",
            "helm.sh/helm/v3/cmd/helm",
            (f"-X helm.sh/helm/v3/internal/version.version={helm}",),
        ),
        Binary(
            "prometheus-operator",
            "promoperator",
            f"{PROMETHEUS_OPERATOR}/cmd/operator",
            # As upstream's Makefile sets them, less the git facts a module has not got.
            (
                f"-X github.com/prometheus/common/version.Version={promop.lstrip('v')}",
                "-X github.com/prometheus/common/version.Branch=module",
            ),
            own_dir=f"prometheus-operator-{promop}",
        ),
        # Debian's prometheus has no Kubernetes service discovery (removed there for its
        # dependencies), so the one that reads ServiceMonitors' targets is built here, with
        # its web UI built from the module's sources and embedded as upstream's release is.
        Binary(
            "prometheus",
            "prometheus",
            f"{PROMETHEUS}/cmd/prometheus",
            (
                f"-X github.com/prometheus/common/version.Version={prometheus}",
                "-X github.com/prometheus/common/version.Branch=module",
            ),
            own_dir=f"prometheus-v{prometheus}",
            tags=("builtinassets",),
            web_ui=PROMETHEUS,
        ),
        # Serves external.metrics.k8s.io from Prometheus queries: what makes the HPA's
        # requests_per_second real (e2e.adapter runs it with the chart's rules).
        Binary(
            "prometheus-adapter",
            "adapter",
            f"{PROMETHEUS_ADAPTER}/cmd/adapter",
            own_dir=f"prometheus-adapter-{adapter}",
        ),
        # Lints .github/workflows/ (tests/test_release.py); keyed by its own module.
        Binary(
            "actionlint",
            "actionlint",
            "github.com/rhysd/actionlint/cmd/actionlint",
            (f"-X github.com/rhysd/actionlint.version={actionlint}",),
            own_dir=f"actionlint-{actionlint}",
        ),
    ]


def _build_flags(binary: Binary) -> list[str]:
    ldflags = " ".join(["-s", "-w", *binary.ldflags])
    tags = ["-tags", ",".join(binary.tags)] if binary.tags else []
    return ["-trimpath", *tags, "-ldflags", ldflags]


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("the Go toolchain (go >= 1.26) is needed to build the e2e binaries")
    return go


@functools.cache
def _go_version(go: str) -> str:
    return subprocess.run(
        [go, "env", "GOVERSION", "GOOS", "GOARCH"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _group_hash(group: list[Binary], go: str | None) -> str:
    """A digest of everything that decides the bytes of `group`'s binaries: their modules'
    files, the Go version and their build flags, and nothing else under toolchain/."""
    modules = {binary.module for binary in group}
    digest = hashlib.sha256()
    for path in sorted(TOOLCHAIN_DIR.rglob("*")):
        relative = path.relative_to(TOOLCHAIN_DIR)
        if relative.parts[0] not in modules:
            continue
        if path.is_file() and path.suffix in {".mod", ".sum", ".go"}:
            digest.update(str(relative).encode())
            digest.update(path.read_bytes())
    digest.update(_go_version(go or _go()).encode())
    for binary in group:
        recipe: list[object] = [binary.name, binary.package, _build_flags(binary)]
        if binary.web_ui:
            recipe.append([binary.web_ui, *WEB_UI_WORKSPACES])
        digest.update(json.dumps(recipe).encode())
    return digest.hexdigest()[:12]


def toolchain_hash(go: str | None = None) -> str:
    """The hash of the cluster's shared directory: the shared binaries' modules only."""
    return _group_hash([b for b in binaries() if b.own_dir is None], go)


def bin_dir(go: str | None = None) -> Path:
    """The cluster's binaries (kube and its aliases, etcd, kwok, helm)."""
    return bin_root() / f"{kubernetes_version()}-{toolchain_hash(go)}"


def binary_dir(binary: Binary, go: str | None = None) -> Path:
    """Where `binary` is built: the shared directory, or one keyed by its module alone."""
    if binary.own_dir is None:
        return bin_dir(go)
    return bin_root() / f"{binary.own_dir}-{_group_hash([binary], go)}"


def _log(message: str) -> None:
    print(f"[e2e build] {message}", file=sys.stderr, flush=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise builders: two test runs must not race on the same output files."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _run_logged(cmd: list[str], cwd: Path, log_path: Path, what: str) -> tuple[int, float]:
    """Runs `cmd` with its output appended to `log_path`, saying every minute that it is
    still `what`; returns its exit status and the seconds it took."""
    started = time.monotonic()
    with open(log_path, "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = proc.wait(timeout=_HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                _log(f"  still {what} ({time.monotonic() - started:.0f}s)")
    return rc, time.monotonic() - started


def _npm() -> str:
    npm = shutil.which("npm")
    if not npm:
        raise BuildError(
            "Node.js (18, 20 or >= 22, as the UI's vite 6 needs) and npm are needed to build "
            "Prometheus' web UI; its first step, `npm ci`, cannot run: no npm on PATH"
        )
    return npm


def _npm_step(npm: str, args: list[str], ui_dir: Path, log_path: Path) -> None:
    """One npm step of the web UI's build; a failure names the step and quotes npm."""
    step = " ".join(["npm", *args])
    _log(f"  web UI: {step} ...")
    rc, elapsed = _run_logged([npm, *args], ui_dir, log_path, f"running {step}")
    if rc != 0:
        raise BuildError(
            f"building the web UI: `{step}` failed (exit {rc}) after {elapsed:.0f}s in "
            f"{ui_dir}; full log: {log_path}\n{_tail(log_path)}"
        )


def _writable_dirs(path: Path) -> None:
    """Module cache directories are read-only, and copytree copies that; undo it."""
    for directory, _, _ in os.walk(path):
        os.chmod(directory, 0o755)


def _remove_tree(path: Path) -> None:
    _writable_dirs(path)
    shutil.rmtree(path, ignore_errors=True)


def _writable_copy(source: Path, copy: Path) -> None:
    """A copy of a module from the module cache that the build may write into."""
    _remove_tree(copy)
    shutil.copytree(source, copy, copy_function=shutil.copyfile)
    _writable_dirs(copy)


def _compress_web_ui(ui_dir: Path) -> list[str]:
    """Gzips the built UI to where the module serves it from, as upstream's
    scripts/compress_assets.sh does (no name or time stamp in the gzip header); returns
    the files' paths relative to web/ui, for go:embed."""
    dist, static = ui_dir / _WEB_UI_DIST, ui_dir / _WEB_UI_STATIC
    if not (dist / "index.html").is_file():
        raise BuildError(f"building the web UI produced no {dist / 'index.html'}")
    embedded = []
    for path in sorted(p for p in dist.rglob("*") if p.is_file()):
        target = static / f"{path.relative_to(dist)}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
        embedded.append(target.relative_to(ui_dir).as_posix())
    return embedded


def _write_embed_go(ui_dir: Path, embedded: list[str]) -> None:
    """web/ui/embed.go as compress_assets.sh writes it: the template plus one go:embed."""
    template = (ui_dir / "embed.go.tmpl").read_text()
    embed = f"{template}//go:embed {' '.join(embedded)}\nvar EmbedFS embed.FS\n"
    (ui_dir / "embed.go").write_text(embed)


def _build_web_ui(ui_dir: Path, log_path: Path) -> None:
    """Upstream's `make assets assets-compress` for the UI Prometheus 3 serves."""
    npm = _npm()
    _npm_step(npm, ["ci", "--no-audit", "--no-fund"], ui_dir, log_path)
    for workspace in WEB_UI_WORKSPACES:
        _npm_step(npm, ["run", "build", "-w", workspace], ui_dir, log_path)
    _write_embed_go(ui_dir, _compress_web_ui(ui_dir))
    shutil.rmtree(ui_dir / "node_modules")  # hundreds of MB, not needed by go build


def _embed_web_ui(binary: Binary, path: str, work_dir: Path, log_path: Path) -> list[str]:
    """Builds the web UI of module `path` into a writable copy of it; returns the
    `go build` flags that build `binary` against the copy."""
    _npm()  # before anything else: say at once that npm is missing
    module = TOOLCHAIN_DIR / binary.module
    version = required_version(binary.module, path)
    copy = work_dir / "module"
    log_path.write_text("")
    _log(f"building the web UI of {path}@{version} with npm (log: {log_path})")
    started = time.monotonic()
    _writable_copy(download_module(path, version, cwd=module), copy)
    _build_web_ui(copy / "web" / "ui", log_path)
    _log(f"built the web UI in {time.monotonic() - started:.0f}s")
    modfile = work_dir / "go.mod"
    modfile.write_text(f"{(module / 'go.mod').read_text()}\nreplace {path} => {copy}\n")
    shutil.copyfile(module / "go.sum", work_dir / "go.sum")
    return ["-modfile", str(modfile)]


def _build_one(go: str, binary: Binary, out_dir: Path) -> None:
    target = out_dir / binary.name
    partial = out_dir / f".{binary.name}.partial"
    log_path = out_dir / f"build-{binary.name}.log"
    log_path.write_text("")
    work_dir = out_dir / f".{binary.name}.work"
    _remove_tree(work_dir)
    what = binary.name + (f" ({', '.join(binary.aliases)})" if binary.aliases else "")
    _log(f"building {what} ...")
    started = time.monotonic()
    source_flags: list[str] = []
    if binary.web_ui:
        work_dir.mkdir()
        ui_log = out_dir / f"build-{binary.name}-ui.log"
        source_flags = _embed_web_ui(binary, binary.web_ui, work_dir, ui_log)
    jobs = str(os.cpu_count() or 2)
    cmd = [go, "build", "-p", jobs, *_build_flags(binary), *source_flags, "-o", str(partial)]
    cmd.append(binary.package)
    cwd = TOOLCHAIN_DIR / binary.module
    rc, _ = _run_logged(cmd, cwd, log_path, f"building {binary.name}")
    elapsed = time.monotonic() - started
    if rc != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(
            f"building {binary.name} from toolchain/{binary.module} failed (exit {rc}) after "
            f"{elapsed:.0f}s; full log: {log_path}\n{_tail(log_path)}"
        )
    _remove_tree(work_dir)
    partial.replace(target)  # atomic: a half-written binary is never mistaken for a build
    for alias in binary.aliases:
        link = out_dir / alias
        link.unlink(missing_ok=True)
        link.symlink_to(binary.name)
    _log(f"built {binary.name} in {elapsed:.0f}s")


def _complete(out_dir: Path, binary: Binary) -> bool:
    names = (binary.name, *binary.aliases)
    return all((out_dir / name).exists() for name in names)


# What a cluster needs; helm and prometheus-operator are built only when asked for (chart
# and monitoring tests, `build`).
CLUSTER_BINARIES = ("kube", "etcd", "kwok")


def ensure_built(names: tuple[str, ...] | None = None) -> Path:
    """Build whichever of `names` (default: all) is missing; returns their directory.

    The named binaries must share one directory (the cluster's, or prometheus-operator's
    own); with no names everything is built and the cluster's directory is returned.
    """
    go = _go()
    known = binaries()
    unknown = set(names or ()) - {b.name for b in known}
    if unknown:
        raise BuildError(f"no such binary: {', '.join(sorted(unknown))}")
    wanted = [b for b in known if names is None or b.name in names]
    groups: dict[Path, list[Binary]] = {}
    for binary in wanted:
        groups.setdefault(binary_dir(binary, go), []).append(binary)
    if names is None:
        result = bin_dir(go)
    elif len(groups) == 1:
        (result,) = groups
    else:
        raise BuildError(f"{', '.join(names)} live in different directories; ask for each")
    for out_dir, group in groups.items():
        if all(_complete(out_dir, b) for b in group):
            continue
        with _locked(out_dir):
            missing = [b for b in group if not _complete(out_dir, b)]
            if missing:
                _log(
                    f"building {', '.join(b.name for b in missing)} into {out_dir} (first run "
                    "only; the Go build cache makes later toolchain changes faster)"
                )
                started = time.monotonic()
                for binary in missing:
                    _build_one(go, binary, out_dir)
                _log(f"all binaries built in {time.monotonic() - started:.0f}s")
    return result


def module_dir(module: str, path: str) -> Path:
    """The extracted source of a pinned dependency, from the Go module cache.

    Published files (kwok's stage definitions, prometheus-operator's CRDs) are read from
    there, so what the cluster installs is exactly what upstream ships.
    """
    version = required_version(module, path)
    return download_module(path, version, cwd=TOOLCHAIN_DIR / module)


def download_module(path: str, version: str, cwd: Path | None = None) -> Path:
    result = subprocess.run(
        [_go(), "mod", "download", "-json", f"{path}@{version}"],
        capture_output=True,
        text=True,
        cwd=cwd or TOOLCHAIN_DIR,
    )
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        detail = info.get("Error") or result.stderr.strip()
        raise BuildError(f"go mod download {path}@{version} failed: {detail}")
    return Path(info["Dir"])
