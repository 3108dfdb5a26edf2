"""How a run reports itself while it runs: a log line per round, and on a terminal a live status line.

The log lines (they also go to run.log) are the record. The status line is
redrawn in place with a carriage return: the workflow, the round and how many
sites have answered in it, and the last global accuracy. It is cleared before
each log line and at the end, so the terminal keeps only the record. When
stdout is not a terminal (a file, CI, a pipe) there is no status line.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any, Optional, TextIO

from fedray.records.report import cross_site_table

log = logging.getLogger("fedray")

CLEAR_LINE = "\r\033[K"


class Progress:
    def __init__(self, out: Optional[TextIO] = None, live: Optional[bool] = None) -> None:
        self.out = out or sys.stdout  # looked up now, not at import: pytest and notebooks swap it
        self.live = self.out.isatty() if live is None else live
        self.status = ""
        self.round: Optional[int] = None  # the round that runs
        self.answered: dict[str, bool] = {}  # site -> ok, in that round
        self.last_round = ""  # the global accuracy after the last finished round

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "workflow":
            self._show(f"{event['id']} ...")
        elif kind == "site_done":
            self._site_done(event)
        elif kind == "round":
            self._round(event)
        elif kind == "cross_site":
            self._cross_site(event)
        elif kind == "privacy_budget":
            self._log(logging.WARNING, "%s", event["message"])

    def close(self) -> None:
        self._show("")

    def _site_done(self, event: dict[str, Any]) -> None:
        if event["round"] != self.round:
            self.round, self.answered = event["round"], {}
        self.answered[event["site"]] = event["ok"]
        self._show(self._round_status(event))

    def _round(self, event: dict[str, Any]) -> None:
        metrics = event["global"]
        if metrics:
            self.last_round = f"round {event['round'] + 1}: val_acc {metrics['val_accuracy']:.4f}"
        then = ""
        if event["round"] + 1 < event["num_rounds"]:
            self.round, self.answered = event["round"] + 1, {}
            then = self._round_status(event)
        scores = ("val_acc %.4f  test_acc %.4f  test_loss %.4f" % (
            metrics["val_accuracy"], metrics["test_accuracy"], metrics["test_loss"]) if metrics else "not evaluated (eval_every)")
        privacy = event.get("privacy")
        spent = f"  epsilon {privacy['epsilon']:.3g} (delta {privacy['delta']:.2g})" if privacy else ""
        if event.get("sim_time"):  # the simulated clock (fedray/system/) after this round
            spent += f"  sim {event['sim_time'] / 3600:.3f} h"
        self._log(
            logging.INFO,
            "round %d/%d  %s  sites %d/%d  %.1f s%s",
            event["round"] + 1, event["num_rounds"], scores, len(event["sites"]), event["num_sites"], event["seconds"],
            spent, then=then,
        )

    def _round_status(self, event: dict[str, Any]) -> str:
        failed = sum(not ok for ok in self.answered.values())
        return (
            f"round {self.round + 1}/{event['num_rounds']}: {len(self.answered)}/{event['num_sites']} sites done"
            + (f" ({failed} failed)" if failed else "")
            + (f"; {self.last_round}" if self.last_round else "")
        )

    def _cross_site(self, event: dict[str, Any]) -> None:
        for failure in event["failures"]:
            self._log(logging.WARNING, "cross-site: %s failed to %s (%s: %s)", failure["site"], failure["task"],
                      failure["kind"], failure["message"])
        if event["results"]:
            self._log(logging.INFO, "cross-site validation (accuracy; rows: data of, columns: model)\n%s",
                      cross_site_table(event["results"]))

    def _log(self, level: int, message: str, *args: Any, then: Optional[str] = None) -> None:
        """Log a line with the status line out of its way, then show `then` (default: the status as it was)."""
        then = self.status if then is None else then
        self._show("")
        log.log(level, message, *args)
        self._show(then)

    def _show(self, status: str) -> None:
        if not self.live or status == self.status:
            return
        # Longer than the terminal, it would wrap, and the carriage return would only redraw its end.
        width = shutil.get_terminal_size().columns - 1
        self.out.write(CLEAR_LINE + status[:width])
        self.out.flush()
        self.status = status
