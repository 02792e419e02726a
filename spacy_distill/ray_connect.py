"""Connecting this process to Ray: shared by Ray Serve (``serving.ray_serve``) and
labelling on Ray (``ray_label``)."""

import os
from typing import Any, Dict, Optional


def connect(address: Optional[str]) -> bool:
    """Connect this process to Ray, unless it already is.

    address (Optional[str]): ``host:port`` of a running cluster, ``"auto"``,
        or None to use ``RAY_ADDRESS`` or start a local single-node Ray.
    RETURNS (bool): Whether this call connected (and so should disconnect).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"log_to_driver": False}
    host = (address or "").replace("ray://", "").rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost"):
        # Join a loopback cluster as a loopback node (Ray would otherwise pick the routable IP).
        kwargs["_node_ip_address"] = "127.0.0.1"
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A local Ray started here: no dashboard, no usage stats.
        kwargs["include_dashboard"] = False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, **kwargs)
    return True
