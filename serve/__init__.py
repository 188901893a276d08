"""HTTP serving of the mpic ensemble.

* :mod:`serve.api` — ``create_api``: the FastAPI app (no Ray) assembled from :mod:`serve.routers`
  (analysis, models, health, page and docs), :mod:`serve.deps` (state, API key, upload limits) and
  :mod:`serve.schemas` (the typed responses).
* :mod:`serve.member` — one Ray Serve deployment class for every ensemble member (batched scoring).
* :mod:`serve.ingress` — the FastAPI ingress deployment calling the member deployments.
* :mod:`serve.app` — ``build_app`` (``serve run serve.app:build_app``) and ``run_local`` for ``mpic serve``.

Nothing here does I/O or imports Ray at package import time.
"""
