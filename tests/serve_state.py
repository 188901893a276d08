"""What the Serve controller knows of the running instance, for tests that inspect replicas and options.

The project itself uses only Ray's public APIs (``serve.status()`` and friends); tests need more than those
expose without the dashboard — replica ids, actor ids, pids, nodes, deployment and HTTP options — so they
ask the controller through the client Ray's own ``serve`` CLI uses.
"""

from __future__ import annotations

from typing import Any

from serve.app import APP_NAME


def serve_details() -> dict[str, Any]:
    """The controller's view of the Serve instance (as the dashboard shows it)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running on the connected Ray")
    return dict(client.get_serve_details())


def replica_details(name: str = APP_NAME) -> dict[str, list[dict[str, Any]]]:
    """Per deployment, its replicas' ``replica_id``, ``actor_id``, ``pid`` and ``state`` (controller view)."""
    app = serve_details().get("applications", {}).get(name, {})
    return {
        dep: [
            {k: r.get(k) for k in ("replica_id", "actor_id", "pid", "state")} for r in d.get("replicas", [])
        ]
        for dep, d in app.get("deployments", {}).items()
    }


def serve_http_url() -> str:
    """Base URL (``http://host:port``) of the HTTP proxy of the Serve instance on the connected Ray."""
    opts = serve_details().get("http_options") or {}
    host = str(opts.get("host") or "127.0.0.1")
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else ("::1" if host == "::" else host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{int(opts.get('port') or 8000)}"
