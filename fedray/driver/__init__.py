"""The driver: the process a user starts (`python -m fedray.run`, or `run_job` from Python).

It checks the job before any Ray work (`preflight`), joins or starts Ray (`cluster`, `reaper`),
plans the site actors (`resources`), starts them and the controller, follows the run (`job`,
`progress`) and is the only process that writes the run folder (through `fedray.records`).
It may import anything in fedray; nothing else in fedray imports it but `fedray.run`.
"""
