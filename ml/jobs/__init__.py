"""The logic of the training and fusion jobs, without Ray: what `ray_jobs/` runs on a cluster.

* :mod:`ml.jobs.plan` — which (member, fold) trials, with what resources, under which job key;
* :mod:`ml.jobs.folds` — a (member, fold)'s final files in ``runs_dir`` (publishing, finding, conflicts);
* :mod:`ml.jobs.faults` — fault injection for tests and drills;
* :mod:`ml.jobs.worker` — one training worker: fit a (member, fold) through an injected runtime;
* :mod:`ml.jobs.driver` — the training job's driver state machine, MLflow logging and registration;
* :mod:`ml.jobs.fusion` — the fusion job around an injected search: baselines, spec, registration.

The adapters in `ray_jobs/` supply the Ray parts (Tune grid, TorchTrainer, ``ray.train.report``).
"""
