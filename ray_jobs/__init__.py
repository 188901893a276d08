"""Ray jobs: `python -m ray_jobs.train` (fold-parallel training) and friends, submitted with `ray job submit`.

Each job is a plain function (``train(cfg, ...)``) that tests call directly plus a small ``main(argv)``;
:mod:`ray_jobs.common` holds the shared argument parsing and Ray connection.
"""
