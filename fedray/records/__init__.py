"""What the driver writes into a run folder and reads back: the run recorder (`recorder`: models,
summary.json, rounds.jsonl), `checkpoint` (resume=RUN_DIR), `tensorboard`, `plots`, `report`
(`python -m fedray.records.report`) and the sweep summary (`sweep`, a Hydra callback).

Files only: no Ray (import contract). Run by the driver, never by a site or the controller.
"""
