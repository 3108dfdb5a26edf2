"""A site's process: the Ray actor that trains and evaluates sites (`actor`, thin; `worker`, the
torch side), local training (`training`, `batched_training`), a user's Client API script
(`script_runner`) and the metric stream to the driver (`metric_stream`).

Imports nothing of the driver, the run folder's writers or the server (import contracts).
"""
