"""Serve the HTTP API on a Ray cluster with Ray Serve: N replicas, one API.

Every replica runs the very app that ``spacy-distill serve`` runs
(``app.create_app``), wrapped with ``serve.ingress``: same routes,
request and response schemas, limits, bearer-token auth, ``/status`` and
``/metrics``. Ray Serve's proxy spreads requests over the replicas and
restarts replicas that die.

Batching: each replica batches with the app's own per-model worker (requests
that arrive within ``batch_wait_ms`` share one ``nlp.pipe`` call, up to
``max_batch_size`` texts), exactly as the local server does, so ``max_queue``
503s and the batching numbers in ``/status`` mean the same on Ray. As there,
each model runs in a worker process of the replica (``inference="process"``),
so a slow request cannot block the replica's event loop and timed-out work is
stopped. The connection limits of ``serving/connections.py`` do not apply
(Ray's proxy speaks HTTP); the header-count and body-timeout checks of the
app do. Ray's
``@serve.batch`` is not used: it would either batch a second time in front of
the app's batcher or need a second deployment behind the API (one more hop and
a pickled payload per request) for no gain on CPU students.
``max_ongoing_requests`` is raised above Ray's default (5) so that enough
requests reach a replica at once for its batcher to form full batches.

Each response carries ``X-Replica`` (the Serve replica id) and ``X-Ray-Node``
(the Ray node id) headers, so a client can see the load spread. They are
headers, so the JSON schemas stay those of the local server.

Two ways in:

* :func:`serve_on_ray` — what ``spacy-distill serve --ray`` calls.
* :func:`app_builder` — for ``serve run`` / ``serve deploy`` with
  ``configs/serve_ray.yaml``.
"""

import logging
import os
import signal
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional

try:
    import ray
    from ray import serve
    from ray.serve import Application
except ImportError as err:  # pragma: no cover - depends on the install
    raise ImportError("Serving on Ray needs Ray Serve: pip install 'spacy-distill[ray]'") from err

from fastapi import FastAPI

from ..ray_connect import connect
from .app import create_app
from .middleware import HTTPMiddleware
from .settings import TOKEN_ENV_VAR, ServeSettings

logger = logging.getLogger("spacy_distill.ray")

APP_NAME = "spacy-distill"
DEPLOYMENT_NAME = "SpacyDistillServer"
REPLICA_HEADER = "X-Replica"
NODE_HEADER = "X-Ray-Node"


class _ReplicaHeaders(HTTPMiddleware):
    """ASGI middleware adding the replica and node ids to every HTTP response.

    app (Any): The wrapped ASGI app.
    replica (str): Serve replica id.
    node (str): Ray node id.
    """

    def __init__(self, app: Any, replica: str, node: str) -> None:
        super().__init__(app)
        self.headers = [
            (REPLICA_HEADER.lower().encode(), replica.encode()),
            (NODE_HEADER.lower().encode(), node.encode()),
        ]

    async def http(
        self, scope: Dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        """Pass the request on; add the headers to its response (arguments: ``HTTPMiddleware.http``)."""

        async def send_with_headers(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers") or []) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


@serve.ingress()
class SpacyDistillServer:
    """One replica: the local server's FastAPI app, built on the replica.

    The app is built on the replica (``__serve_build_asgi_app__``), not
    pickled from the driver: it holds locks, threads and loaded pipelines.
    Models load during the app's startup, before the replica takes traffic,
    so a model that fails to load fails the replica (and the deployment)
    instead of serving 503s forever.

    models (Dict[str, str]): Model name to package name or path (must exist
        on every node that runs a replica).
    settings (Dict[str, Any]): ``ServeSettings.to_dict()``.
    """

    def __init__(self, models: Dict[str, str], settings: Dict[str, Any]) -> None:
        self._models = dict(models)
        self._settings = ServeSettings.from_dict({**settings, "load_in_background": False})
        self._app: Optional[FastAPI] = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self._models, self._settings)
        replica = serve.get_replica_context().replica_id.unique_id
        node = ray.get_runtime_context().get_node_id()
        app.add_middleware(_ReplicaHeaders, replica=replica, node=node)
        self._app = app
        return app

    def check_health(self) -> None:
        """Serve's periodic health check: unhealthy replicas are replaced."""
        if self._app is None:
            return
        state = self._app.state.serving
        if state.load_error:
            raise RuntimeError(state.load_error)


def build_app(
    models: Mapping[str, str],
    settings: Optional[ServeSettings] = None,
    *,
    replicas: int = 1,
    num_cpus_per_replica: float = 1.0,
    num_gpus_per_replica: float = 0.0,
    max_ongoing_requests: Optional[int] = None,
    max_replicas_per_node: Optional[int] = None,
    runtime_env: Optional[Dict[str, Any]] = None,
) -> Application:
    """The Ray Serve application (not yet running).

    models (Mapping[str, str]): Model name to package name or path. Paths must
        exist on every node (shared storage, or the packaged student installed
        on every node and given by package name).
    settings (Optional[ServeSettings]): Limits, batching, auth, CORS. ``host``,
        ``port`` and ``workers`` are ignored here (the Serve proxy listens).
    replicas (int): Number of replicas.
    num_cpus_per_replica (float): CPUs Ray reserves per replica.
    num_gpus_per_replica (float): GPUs Ray reserves per replica.
    max_ongoing_requests (Optional[int]): Requests a replica takes at once;
        default twice ``max_batch_size``, so its batcher can fill batches.
    max_replicas_per_node (Optional[int]): Spread replicas over nodes.
    runtime_env (Optional[Dict[str, Any]]): Ray runtime env for the replicas.
    RETURNS (Application): Bound application for ``serve.run``.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if not models:
        raise ValueError("at least one model is needed")
    settings = settings or ServeSettings()
    actor_options: Dict[str, Any] = {
        "num_cpus": num_cpus_per_replica,
        "num_gpus": num_gpus_per_replica,
    }
    if runtime_env:
        actor_options["runtime_env"] = runtime_env
    options: Dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "num_replicas": replicas,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": max_ongoing_requests or 2 * settings.max_batch_size,
        # A replica finishes what it has in flight (the app drains its queue) before it stops.
        "graceful_shutdown_timeout_s": settings.request_timeout_s,
    }
    if max_replicas_per_node is not None:
        options["max_replicas_per_node"] = max_replicas_per_node
    deployment = serve.deployment(SpacyDistillServer).options(**options)
    return deployment.bind({str(k): str(v) for k, v in models.items()}, settings.to_dict())


def app_builder(args: Dict[str, Any]) -> Application:
    """Builder for ``serve run`` / ``serve deploy`` (see ``configs/serve_ray.yaml``).

    The bearer token is never written in the config: it is read from the
    ``SPACY_DISTILL_TOKEN`` environment variable where the app is built
    (``runtime_env.env_vars`` in the config, or the environment of ``serve
    run``), unless ``settings.token`` is given.

    args (Dict[str, Any]): ``models`` (name → package or path, required),
        ``settings`` (``ServeSettings`` fields), ``replicas``,
        ``num_cpus_per_replica``, ``num_gpus_per_replica``,
        ``max_ongoing_requests``, ``max_replicas_per_node``.
    RETURNS (Application): The application.
    """
    known = {
        "models",
        "settings",
        "replicas",
        "num_cpus_per_replica",
        "num_gpus_per_replica",
        "max_ongoing_requests",
        "max_replicas_per_node",
    }
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown args {sorted(unknown)}; expected some of {sorted(known)}")
    models = args.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError("args.models must map model names to package names or paths")
    settings_dict = dict(args.get("settings") or {})
    if not settings_dict.get("token") and os.environ.get(TOKEN_ENV_VAR):
        settings_dict["token"] = os.environ[TOKEN_ENV_VAR]
    return build_app(
        models,
        ServeSettings.from_dict(settings_dict),
        replicas=int(args.get("replicas", 1)),
        num_cpus_per_replica=float(args.get("num_cpus_per_replica", 1.0)),
        num_gpus_per_replica=float(args.get("num_gpus_per_replica", 0.0)),
        max_ongoing_requests=args.get("max_ongoing_requests"),
        max_replicas_per_node=args.get("max_replicas_per_node"),
    )


def _routing_env(prefer_local: bool) -> Dict[str, str]:
    return {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "1" if prefer_local else "0"}


def serve_on_ray(
    models: Dict[str, str],
    settings: Optional[ServeSettings] = None,
    *,
    address: Optional[str] = None,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = True,
    num_cpus_per_replica: float = 1.0,
    num_gpus_per_replica: float = 0.0,
    max_replicas_per_node: Optional[int] = None,
    proxy_location: str = "HeadOnly",
    prefer_local_replicas: bool = False,
    app_name: str = APP_NAME,
) -> str:
    """Deploy the API on Ray Serve with ``replicas`` replicas.

    models (Dict[str, str]): Model name to package name or path (first is the
        default model). Must be loadable on every node that gets a replica.
    settings (Optional[ServeSettings]): As for the local server; ``host``,
        ``port`` and ``workers`` are ignored (see ``host``/``port`` below).
    address (Optional[str]): Ray cluster address (``host:port`` or
        ``"auto"``); None uses ``RAY_ADDRESS`` or starts a local Ray.
    replicas (int): Number of replicas.
    host (str): Interface the Serve HTTP proxy binds.
    port (int): Port of the Serve HTTP proxy.
    blocking (bool): Serve until Ctrl-C / SIGTERM, then remove the app (and
        stop Ray if this call started it). If False, return once the app is
        running and leave it running.
    num_cpus_per_replica (float): CPUs reserved per replica.
    num_gpus_per_replica (float): GPUs reserved per replica.
    max_replicas_per_node (Optional[int]): Cap replicas per node (spread).
    proxy_location (str): "HeadOnly" (one proxy, on the head) or "EveryNode"
        (one per node with a replica; put a load balancer in front).
    prefer_local_replicas (bool): Let a proxy send requests to replicas on
        its own node first (Ray's default), which with one proxy leaves the
        other nodes' replicas idle until the local ones are full. Off by
        default: requests spread over all replicas. Applies only when this
        call starts Serve on the cluster.
    app_name (str): Serve application name.
    RETURNS (str): The base URL of the API.
    """
    settings = settings or ServeSettings()
    started_ray = connect(address)
    try:
        serve.start(
            proxy_location=proxy_location,
            http_options={
                "host": host,
                "port": port,
                # The app answers 503 itself after request_timeout_s; this only
                # catches a replica that stopped answering altogether.
                "request_timeout_s": settings.request_timeout_s + 10.0,
            },
            # Proxies are started by the controller and inherit its env vars.
            controller_options={"runtime_env": {"env_vars": _routing_env(prefer_local_replicas)}},
        )
        app = build_app(
            models,
            settings,
            replicas=replicas,
            num_cpus_per_replica=num_cpus_per_replica,
            num_gpus_per_replica=num_gpus_per_replica,
            max_replicas_per_node=max_replicas_per_node,
        )
        serve.run(app, name=app_name, route_prefix="/", blocking=False)
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    url = f"http://{host}:{port}"
    logger.info("serving %s on %s with %d replica(s)", ", ".join(models), url, replicas)
    if not blocking:
        return url
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.info("removing the %s app", app_name)
        serve.delete(app_name)
        if started_ray:
            serve.shutdown()
            ray.shutdown()
    return url
