"""Former home of the Ray Serve app, now ``spacy_distill.serving.ray_serve``.

Kept as an import alias because Ray Serve configs name the builder by module
path (``import_path: spacy_distill.ray_serving:app_builder``, as in
``configs/serve_ray.yaml`` and configs written from it); new code imports
``spacy_distill.serving.ray_serve``.
"""

from .serving.ray_serve import (  # noqa: F401
    APP_NAME,
    DEPLOYMENT_NAME,
    NODE_HEADER,
    REPLICA_HEADER,
    SpacyDistillServer,
    app_builder,
    build_app,
    serve_on_ray,
)

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "NODE_HEADER",
    "REPLICA_HEADER",
    "SpacyDistillServer",
    "app_builder",
    "build_app",
    "serve_on_ray",
]
