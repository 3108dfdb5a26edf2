"""NVIDIA FLARE compatibility: a FLARE job folder read as fedray overrides (`job_folder`, in the
driver, before anything starts) and the `nvflare` modules FLARE's scripts import, served by fedray
inside a site's process (`nvflare_alias`). No Ray."""
