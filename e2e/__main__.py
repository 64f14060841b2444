"""`python -m e2e up|down|status|build|kubectl`: the local cluster from a shell.

stdout carries only what scripts consume (`eval "$(python -m e2e up)"`); progress and
errors go to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from e2e.demo import DemoError, run_demo, shutdown
from e2e.kwok import PodReadyDelay
from e2e.localcluster import ClusterError, LocalCluster, Options
from e2e.monitoring import MonitoringError
from e2e.netns import PodNetworkError
from e2e.toolchain import BuildError, ensure_built


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m e2e", description="A real Kubernetes control plane with fake GPU nodes."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="cluster state (default: $CCS_E2E_STATE_DIR or ~/.cache/ccs-operator/cluster)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) the cluster; prints `export KUBECONFIG=...`")
    up.add_argument("--fresh", action="store_true", help="wipe etcd data and certificates first")
    up.add_argument(
        "--no-servicemonitor-crd",
        action="store_true",
        help="do not install the prometheus-operator CRDs (ServiceMonitor, PrometheusRule)",
    )
    up.add_argument("--gpu-nodes", type=int, default=4, help="fake 8-GPU nodes (default 4)")
    up.add_argument("--cpu-nodes", type=int, default=1, help="fake CPU-only nodes (default 1)")
    up.add_argument(
        "--served-nodes",
        type=int,
        default=2,
        help="fake GPU nodes whose pods are answered by real Tritons (default 2; tainted)",
    )
    up.add_argument(
        "--pod-ready-delay",
        type=float,
        metavar="SECONDS",
        help="how long a scheduled pod takes to become Ready (a stand-in for cold start)",
    )
    up.add_argument(
        "--pod-ready-jitter",
        type=float,
        metavar="SECONDS",
        help="upper bound of a random pod-ready delay (with --pod-ready-delay as lower bound)",
    )
    sub.add_parser(
        "demo",
        help="cluster + CRD + operator + samples/claude-code.yaml, ending with `kubectl get ccs`",
    )
    sub.add_parser("down", help="stop the demo operator and the processes `up` started")
    sub.add_parser("status", help="say which components run")
    sub.add_parser("build", help="only build (or find) the binaries; prints their directory")
    kubectl = sub.add_parser("kubectl", help="run the built kubectl against the cluster")
    kubectl.add_argument("args", nargs=argparse.REMAINDER)
    run_in = sub.add_parser(
        "exec",
        help="run a command inside the cluster's pod network (curl a pod, send load)",
    )
    run_in.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _options(args: argparse.Namespace) -> Options:
    delay = None
    if args.pod_ready_delay is not None:
        jitter = args.pod_ready_jitter
        delay = PodReadyDelay(
            int(args.pod_ready_delay * 1000), int(jitter * 1000) if jitter is not None else None
        )
    return Options(
        gpu_nodes=args.gpu_nodes,
        cpu_nodes=args.cpu_nodes,
        served_nodes=args.served_nodes,
        pod_ready_delay=delay,
        servicemonitor_crd=not args.no_servicemonitor_crd,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_built())
            return 0
        options = _options(args) if args.command == "up" else Options()
        cluster = LocalCluster(args.state_dir, options)
        if args.command == "demo":
            return run_demo(cluster)
        if args.command == "up":
            kubeconfig = cluster.up(fresh=args.fresh)
            print(f"export KUBECONFIG={shlex.quote(str(kubeconfig))}")
        elif args.command == "down":
            if not shutdown(cluster):
                print("[e2e] nothing was running", file=sys.stderr)
        elif args.command == "status":
            return _status(cluster)
        elif args.command == "kubectl":
            kubectl_args = args.args[1:] if args.args[:1] == ["--"] else args.args
            kubectl = str(cluster.bin_path() / "kubectl")
            os.execv(kubectl, [kubectl, f"--kubeconfig={cluster.kubeconfig}", *kubectl_args])
        elif args.command == "exec":
            command = args.args[1:] if args.args[:1] == ["--"] else args.args
            if not command:
                print(
                    "[e2e] exec: give a command, e.g. python -m e2e exec -- curl ...",
                    file=sys.stderr,
                )
                return 2
            argv = cluster.exec_argv(command)
            os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
            os.execvp(argv[0], argv)
    except (BuildError, ClusterError, DemoError, MonitoringError, PodNetworkError) as exc:
        print(f"[e2e] error: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(cluster: LocalCluster) -> int:
    statuses = cluster.status()
    for status in statuses:
        state = f"running (pid {status.pid})" if status.running else "stopped"
        print(f"{status.name:<24} {state:<22} log: {status.log}")
    print(f"kubeconfig: {cluster.kubeconfig}")
    return 0 if all(s.running for s in statuses) else 3


if __name__ == "__main__":
    sys.exit(main())
