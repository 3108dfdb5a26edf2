"""The server: the controller actor (`controller`) and what it runs: FLARE's workflows
(`workflows/`), tasks sent to the site actors and gathered as they answer (`tasks`).

Runs in the controller's Ray process, which every site and the driver hold a handle of, so Ray
imports it there too: no torch, no site code, no run-folder I/O (import contracts in pyproject.toml).
"""
