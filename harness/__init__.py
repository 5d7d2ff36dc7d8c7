"""harness: the library under ``python -m bench``. Plans, prepares and runs measurements; never prints.

* `harness.config`: ``bench.toml`` (models, devices, sweeps, measurement settings), validated.
* `harness.jobs`: job planning and the documents one job is described by (agent job, record spec).
* `harness.prepare`: building, pruning and exporting a sweep's models on the host.
* `harness.runner`: one device's jobs (`run_device`) and a whole sweep (`run_sweep`), records
  stored as they arrive, progress told to a `runner.Progress`.
* `harness.compress`: prune one model to ratios, a MACs budget or a latency budget (`compress`).
* `harness.target_latency` with its curve model `harness.latency_model`: the latency-budget search.

A script or a notebook drives it the way the command line does::

    from harness import config, runner
    from results.store import Store
    cfg = config.load(Path("bench.toml"))
    outcome = runner.run_sweep(cfg, Store(cfg.store), runner.SweepRequest(devices=["pi"], formats=["onnx"]))
"""
