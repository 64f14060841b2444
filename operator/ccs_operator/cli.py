"""`ccs-operator run | render | tune | crd | version`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from ccs_operator import __version__
from ccs_operator.config import ConfigError, OperatorConfig
from ccs_operator.core.api import SpecError, parse_service
from ccs_operator.core.render import render_children, to_yaml
from ccs_operator.tune import add_arguments as add_tune_arguments

CRD_FILE = Path(__file__).parent / "crds" / "claudecodeservices.yaml"
EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _render(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        return _fail(f"{args.file} is not valid YAML: {exc}")
    try:
        # The operator's own settings from the environment (CCS_*), as `run` reads them; the
        # flags win.
        base = OperatorConfig.from_env(os.environ).render_settings()
    except ConfigError as exc:
        return _fail(str(exc))
    settings = dataclasses.replace(
        base,
        service_monitor_crd=not args.no_service_monitor,
        loader_image=args.loader_image or base.loader_image,
        prometheus_url=args.prometheus_url or base.prometheus_url,
    )
    manifests = []
    for document in documents:
        if not isinstance(document, dict):
            return _fail(f"{args.file}: each document must be a ClaudeCodeService object")
        try:
            ccs = parse_service(document)
        except SpecError as exc:
            return _fail(f"{args.file}: {exc}")
        if args.namespace:
            ccs = ccs.model_copy(update={"namespace": args.namespace})
        manifests.extend(render_children(ccs, floor=args.floor, settings=settings))
    sys.stdout.write(to_yaml(manifests))
    return 0


def _crd(_: argparse.Namespace) -> int:
    sys.stdout.write(CRD_FILE.read_text())
    return 0


def _version(_: argparse.Namespace) -> int:
    print(__version__)
    return 0


def _tune(args: argparse.Namespace) -> int:
    # Measuring needs the serving image's runner (serving_image/, next to this package in
    # the repository) and nvidia-pytriton's tritonserver (the `test` extra).
    root = Path(__file__).resolve().parents[2]
    if (root / "serving_image" / "tune.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from serving_image.tune import run
    except ImportError as exc:
        return _fail(
            f"tune needs the repository's serving_image/ and its dependencies "
            f"(pip install -e '.[test]'): {exc}"
        )
    return run(args)


def _run(args: argparse.Namespace) -> int:
    from ccs_operator.runner import run_operator  # kopf is only imported when the operator runs

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccs-operator",
        description="Run GPU inference services on NVIDIA Triton and keep them warm.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="namespace to watch (repeatable; default: all, or CCS_NAMESPACES)",
    )
    run.add_argument("--log-format", choices=["text", "json"], default=None)
    run.add_argument("--metrics-port", type=int, default=None, help="operator metrics port")
    run.add_argument("--health-port", type=int, default=None, help="liveness endpoint port")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(handler=_run)

    render = commands.add_parser("render", help="print the children of a ClaudeCodeService")
    render.add_argument("-f", "--file", required=True, help="ClaudeCodeService YAML, or -")
    render.add_argument("-n", "--namespace", help="namespace for the children")
    render.add_argument("--floor", type=int, default=None, help="replica floor to render")
    render.add_argument("--loader-image", default=None, help="model loader image")
    render.add_argument(
        "--prometheus-url",
        default=None,
        help="Prometheus the KEDA triggers query (default: $CCS_PROMETHEUS_URL or the "
        "operator's default)",
    )
    render.add_argument(
        "--no-service-monitor",
        action="store_true",
        help="render as for a cluster without the ServiceMonitor CRD",
    )
    render.set_defaults(handler=_render)

    tune = commands.add_parser(
        "tune",
        help="measure batching and instance settings on a real Triton and print the best",
        description="Search spec.batching and the instance count on a real tritonserver "
        "(CPU) under a closed-loop load with a p99 latency SLO; print the best block as YAML "
        "with the measurements behind it.",
    )
    add_tune_arguments(tune)
    tune.set_defaults(handler=_tune)

    commands.add_parser("crd", help="print the CustomResourceDefinition").set_defaults(handler=_crd)
    commands.add_parser("version", help="print the version").set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
