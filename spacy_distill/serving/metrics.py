"""Prometheus metrics of the server.

The metrics live in a registry of their own (not prometheus_client's global
one), so several apps (tests) can live in one process without clashing.
``/metrics`` (``routes_ops.py``) renders it; ``ServerState`` feeds it.
"""

import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .runner import rss_mb

if TYPE_CHECKING:  # pragma: no cover
    from .batching import ModelBatcher


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    # Set in __init__ from one table (the per-model gauges that ``watch`` feeds).
    queue_depth: Gauge
    worker_rss: Gauge
    rss_replacements: Gauge
    restarts: Gauge
    kills: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spacy_distill_requests",
            "HTTP requests answered",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spacy_distill_request_seconds",
            "HTTP request latency",
            ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.texts = Counter(
            "spacy_distill_texts", "Texts run through a model", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "spacy_distill_batch_texts",
            "Texts per nlp.pipe batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "spacy_distill_batch_requests",
            "Requests coalesced into one batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "spacy_distill_batch_seconds",
            "Time to run one batch",
            ["model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # Per-model gauges, read at each scrape (see ``watch``).
        per_model = {
            "queue_depth": ("spacy_distill_queue_depth", "Requests waiting per model"),
            "worker_rss": (
                "spacy_distill_worker_rss_bytes",
                "Resident memory of the process a model runs in",
            ),
            "rss_replacements": (
                "spacy_distill_worker_rss_replacements",
                "Worker processes replaced for passing max_worker_rss_mb",
            ),
            "restarts": (
                "spacy_distill_worker_restarts",
                "Worker processes started again (after a death, a kill or a replacement)",
            ),
            "kills": (
                "spacy_distill_worker_kills",
                "Worker processes killed for running past every deadline of their batch",
            ),
        }
        for attr, (name, documentation) in per_model.items():
            setattr(self, attr, Gauge(name, documentation, ["model"], registry=self.registry))
        self.ready = Gauge(
            "spacy_distill_ready", "1 when every model is loaded", registry=self.registry
        )
        self.process_rss = Gauge(
            "spacy_distill_process_rss_bytes",
            "Resident memory of the HTTP server process",
            registry=self.registry,
        )
        self.process_rss.set_function(lambda: (rss_mb(os.getpid()) or 0.0) * 1024 * 1024)

    def watch(self, model: str, batcher: "ModelBatcher") -> None:
        """Read a model's queue and worker process at each scrape.

        model (str): The model's name.
        batcher (ModelBatcher): Its batcher (and through it, its runner).
        """
        runner = batcher.runner
        self.queue_depth.labels(model).set_function(lambda: batcher.queue_depth)
        self.worker_rss.labels(model).set_function(
            lambda: (runner.current().get("rss_mb") or 0.0) * 1024 * 1024
        )
        self.rss_replacements.labels(model).set_function(lambda: runner.rss_replacements)
        self.restarts.labels(model).set_function(lambda: runner.restarts)
        self.kills.labels(model).set_function(lambda: runner.kills)

    def observe_batch(self, model: str, n_jobs: int, n_texts: int, seconds: float) -> None:
        """Count one batch (the batching thread's observer).

        model (str): The model's name.
        n_jobs (int): Requests coalesced into the batch.
        n_texts (int): Texts in the batch.
        seconds (float): Time the batch took.
        """
        self.texts.labels(model).inc(n_texts)
        self.batch_size.labels(model).observe(n_texts)
        self.batch_requests.labels(model).observe(n_jobs)
        self.batch_seconds.labels(model).observe(seconds)
