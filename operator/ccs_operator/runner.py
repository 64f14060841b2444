"""`ccs-operator run`: configuration, logging, metrics, health, leader election, kopf."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import kopf
import kubernetes
import prometheus_client
from aiohttp import web

from ccs_operator.clients.kube import EventRecorder, KubeClient
from ccs_operator.clients.leader import LeaseElector
from ccs_operator.clients.prometheus import PrometheusClient
from ccs_operator.config import ConfigError, OperatorConfig
from ccs_operator.controllers.floorloop import FloorLoop
from ccs_operator.controllers.handlers import build_registry, own_watch_streams
from ccs_operator.controllers.reconcile import Reconciler
from ccs_operator.core.promql import PrometheusSettings

log = logging.getLogger("ccs_operator")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: OperatorConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    # The kubernetes client logs every request body at DEBUG; keep it quiet.
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # kopf logs every handled event at INFO ("Handler ... succeeded"): one line per watch
    # event of every child; the operator's own log says what it did.
    if config.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def pool_size(config: OperatorConfig) -> int:
    """Connections the API client keeps open for reuse: one per API worker, one per watch
    stream of the operator's own (each holds its connection for minutes) and one for the
    lease keeper, whose renewals run beside the workers. A smaller pool discards a
    connection each time more are out at once (urllib3's "Connection pool is full" warning)
    and the next request opens a new one, TLS handshake included."""
    return config.api_workers + own_watch_streams(config) + 1


def api_client(
    config: OperatorConfig, configuration: kubernetes.client.Configuration | None = None
) -> kubernetes.client.ApiClient:
    """The one API client of the process (in-cluster ServiceAccount, else $KUBECONFIG)."""
    if configuration is None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size(config)
    return kubernetes.client.ApiClient(configuration)


class Health:
    """/healthz: the event loop answers, and once leading, every task that must run does:
    kopf, the reconcile workers, the resync, the floor loop and the lease keeper."""

    def __init__(self) -> None:
        self.operator_task: asyncio.Task[Any] | None = None
        self.tasks: dict[str, Callable[[], bool]] = {}
        self.role = "standby"

    def problem(self) -> str | None:
        if self.operator_task is not None and self.operator_task.done():
            return "operator stopped"
        for name, alive in self.tasks.items():
            if not alive():
                return f"{name} stopped"
        return None

    async def handle(self, _: web.Request) -> web.Response:
        problem = self.problem()
        if problem is not None:
            return web.json_response({"status": problem, "role": self.role}, status=500)
        return web.json_response({"status": "ok", "role": self.role})

    async def serve(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/healthz", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()  # probes come from the kubelet
        return runner


async def serve(config: OperatorConfig) -> int:
    client = api_client(config)
    kube = KubeClient(
        client, workers=config.api_workers, timeout_seconds=config.request_timeout_seconds
    )
    prometheus_client.start_http_server(config.metrics_port)
    health = Health()
    health_runner = await health.serve(config.health_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    elector = None
    if config.leader_election:
        elector = LeaseElector(
            client,
            config.lease_name,
            config.lease_namespace,
            lease_seconds=config.lease_duration_seconds,
        )
        if not await elector.acquire(stop):
            await health_runner.cleanup()
            return 0
    health.role = "leader"

    events = EventRecorder(kube)
    reconciler = Reconciler(
        kube,
        config.render_settings(),
        events,
        workers=config.reconcile_workers,
    )
    prometheus = PrometheusClient(
        PrometheusSettings(
            url=config.prometheus_url,
            bearer_token=config.prometheus_bearer_token,
            timeout_seconds=config.prometheus_timeout_seconds,
        )
    )
    floor_loop = FloorLoop(
        reconciler,
        prometheus,
        window=config.floor_window,
        default_lead_time_seconds=config.default_lead_time_seconds,
        tick_seconds=config.floor_tick_seconds,
        overrides=config.query_overrides,
    )
    registry = build_registry(reconciler, config, floor_loop)
    kopf_stop = asyncio.Event()
    lost = asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            standalone=True,  # the Lease, not kopf peering, decides who acts
            stop_flag=kopf_stop,
        )
    )
    health.operator_task = operator
    health.tasks["reconcile workers"] = lambda: not reconciler.workers.tasks or (
        reconciler.workers.alive()
    )
    health.tasks["background loops"] = lambda: not any(t.done() for t in reconciler.background)

    def fence() -> None:
        # Leadership is gone: another operator may already act. Stop writing at once, before
        # kopf and the loops wind down.
        kube.fence()
        reconciler.workers.fenced = True
        health.role = "lost"

    # kopf installs its own SIGTERM/SIGINT handlers once it starts; ours cover the rest.
    watchers = [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())]
    keeper = asyncio.create_task(elector.keep(lost, stop, on_lost=fence)) if elector else None
    if keeper is not None:
        health.tasks["lease keeper"] = lambda: not keeper.done()
    await asyncio.wait([operator, *watchers], return_when=asyncio.FIRST_COMPLETED)
    # kopf ending with an error (it re-raises a failed root task) is a crash: exit non-zero
    # so the kubelet restarts the pod. kopf handles SIGTERM itself and then ends cleanly.
    crashed = operator.done() and not operator.cancelled() and operator.exception() is not None
    kopf_stop.set()
    await asyncio.gather(operator, return_exceptions=True)
    stop.set()
    for task in [*watchers, *([keeper] if keeper else [])]:
        task.cancel()
    if elector is not None and not lost.is_set():
        await asyncio.to_thread(elector.release)
    await events.drain()
    kube.close()
    prometheus.close()
    await health_runner.cleanup()
    if lost.is_set():
        log.error("lost leadership; exiting so a fresh process can rejoin the election")
        return 1
    if crashed:
        log.error("the kopf operator failed: %s; exiting", operator.exception())
        return 1
    return 0


def run_operator(args: argparse.Namespace) -> int:
    try:
        config = OperatorConfig.from_env().with_overrides(
            namespaces=tuple(args.namespace) if args.namespace else None,
            log_format=args.log_format,
            metrics_port=args.metrics_port,
            health_port=args.health_port,
            log_level="DEBUG" if args.verbose else None,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    log.info("starting ccs-operator (namespaces: %s)", ", ".join(config.namespaces) or "all")
    return asyncio.run(serve(config))
