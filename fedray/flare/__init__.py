"""NVIDIA FLARE compatibility. In the driver, before anything starts: a FLARE job folder read as fedray
overrides (`job_folder`) and FLARE's simulator command line (`simulator_cli`). Inside a site's process:
the `nvflare` modules FLARE's scripts and executors import, served by fedray (`nvflare_alias`, with
FLARE's Executor API in `executor_api` and its model helpers in `model_api`). No Ray."""
