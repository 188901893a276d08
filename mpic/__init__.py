"""The ``mpic`` command line (:mod:`mpic.cli`).

The one place that may import ``ml``, ``ray_jobs`` and ``serve`` together.
"""
