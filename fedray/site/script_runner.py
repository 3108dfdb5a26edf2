"""Run a user's Client API training script inside a site's actor and feed it FLARE's tasks.

The script runs once, in a thread of the site's actor process, with `sys.argv`
set from `site.script_args` and its folder importable. Each task the server
sends becomes a `fedray.client.receive()` in the script; its `send()` is the
task's answer. When the job ends, `receive()` returns None and `is_running()`
turns False, so the code after the script's loop runs before the actor goes.
"""

from __future__ import annotations

import os
import queue
import runpy
import shlex
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from fedray.fl_model import FLModel
from fedray.flare import nvflare_alias
from fedray.flare.components import workspace_root
from fedray.python_path import put_on_python_path

POLL_SECONDS = 0.5
_ENDED = object()  # put in the answers queue when the script's thread ends


class ScriptError(RuntimeError):
    """The script failed, returned, or answered wrongly; the message names the site and the script."""


class ScriptSite:
    def __init__(self, site: str, script: str, script_args: str, job: dict[str, Any],
                 stream: Optional[Callable[[str, str, float, int], None]] = None) -> None:
        self.site = site
        self.script = os.path.abspath(script)
        self.name = f"script {self.script}"  # what the site's errors name
        self.script_args = script_args
        self.job = job
        self.stream = stream  # where tracking.SummaryWriter points go: (site, tag, value, step)
        self.tasks: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        self.running = True
        self.task_name: Optional[str] = None
        self.received: Optional[FLModel] = None  # fedray.client.receive()'s model until it is answered
        self.failure: Optional[str] = None
        self.thread = threading.Thread(target=self._main, name=f"fedray-script-{site}", daemon=True)

    def start(self) -> None:
        """Launch the script now, so its own set-up (data loading) overlaps the other actors' start."""
        from fedray import client

        client._bind(self)
        self.thread.start()

    def ask(self, task_name: str, model: FLModel, timeout: float = 0.0) -> FLModel:
        """Hand `model` to the script as task `task_name`; return what it sends back."""
        if not self.thread.is_alive():
            raise ScriptError(self._describe("is not running any more", self.failure or "it returned"))
        self.tasks.put((task_name, model))
        began = time.monotonic()
        answer = None
        while True:
            try:
                answer = self.answers.get(timeout=POLL_SECONDS)
                if answer is not _ENDED:
                    return answer
            except queue.Empty:
                pass
            if answer is _ENDED or not self.thread.is_alive():
                reason = self.failure or f"returned without sending a result for task '{task_name}'"
                raise ScriptError(self._describe("failed", reason))
            if timeout and time.monotonic() - began > timeout:
                raise ScriptError(self._describe("failed", f"no result for task '{task_name}' in {timeout:g} s"))

    def stop(self, timeout: float = 30.0) -> None:
        """End the job for the script: a pending receive() returns None, then its epilogue runs."""
        self.running = False
        self.tasks.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    # Called by fedray.client, from the script's thread.
    def next_task(self, timeout: Optional[float]) -> Optional[tuple[str, FLModel]]:
        if not self.running:
            return None  # the job has ended: every later receive() returns None at once
        try:
            task = self.tasks.get(timeout=timeout)
        except queue.Empty:
            return None
        if task is None:
            self.running = False
            return None
        self.task_name = task[0]
        return task

    def answer(self, model: FLModel) -> None:
        self.answers.put(model)

    def _main(self) -> None:
        sys.argv = [self.script, *shlex.split(self.script_args)]
        # The site's own working directory, as FLARE's site workspace: what the script writes by a
        # relative path (./cifar_net.pth, Lightning's lightning_logs/) stays apart from the other sites'.
        os.chdir(workspace_root(self.job, self.site))  # the actor's process is this script's alone (one actor per script site)
        put_on_python_path(self.job, self.script)  # `from net import Net` beside the script
        nvflare_alias.install()  # FLARE's scripts run unchanged: `import nvflare.client as flare`
        try:
            runpy.run_path(self.script, run_name="__main__")
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                self.failure = f"exited with status {exit_.code}"
        except BaseException as err:  # the script's own error: its traceback goes to this site's log
            if not self.running:
                # FLARE's examples use receive()'s model without checking for None, the job's end.
                print(f"[{self.site}] script {self.script} raised {type(err).__name__} after the job ended; ignored",
                      file=sys.stderr, flush=True)
                return
            print(f"[{self.site}] script {self.script} raised:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            self.failure = f"raised {type(err).__name__}: {err}".splitlines()[0]
        finally:
            self.answers.put(_ENDED)  # wakes a waiting ask() at once

    def _describe(self, what: str, reason: Optional[str]) -> str:
        return f"{self.site}: script {self.script} {what}" + (f": {reason}" if reason else "")
