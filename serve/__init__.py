"""HTTP serving of the mpic ensemble.

* :mod:`serve.api` — the FastAPI app (no Ray): routes, limits, the analysis flow, :class:`LocalBackend`.
* :mod:`serve.member` — one Ray Serve deployment class for every ensemble member (batched scoring).
* :mod:`serve.ingress` — the FastAPI ingress deployment calling the member deployments.
* :mod:`serve.app` — ``build_app`` (``serve run serve.app:build_app``) and ``run_local`` for ``mpic serve``.

Nothing here does I/O or imports Ray at package import time.
"""
