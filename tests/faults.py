"""Run trainer-train with a fault injected at a known global step, so tests drive races from inside:

    python tests/faults.py FAULT STEP [READY_FILE] -- <trainer-train flags>

  sigterm      the process sends itself SIGTERM during step STEP (as a preemption would)
  hang         after step STEP (and its checkpoint, if one is due) write READY_FILE, then wait to be killed
  nan_weights  after step STEP (the first time only: a recovery trains it again), a weight becomes NaN (its loss
               was finite: the check must look at weights)
"""
import os
import pathlib
import signal
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trainer import runtime  # noqa: E402

runtime.import_tensorflow()   # quietly, as the command would
from trainer import train as train_lib  # noqa: E402
from trainer.cli import train  # noqa: E402

fault, step = sys.argv[1], int(sys.argv[2])
ready = sys.argv[3] if sys.argv[3] != "-" else None
original = train_lib.Loop.after_step


fired = []


def after_step(self, global_step):
    if global_step == step and not fired:
        fired.append(global_step)
        if fault == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif fault == "nan_weights":
            weight = self.model.trainable_weights[0]
            weight.assign(weight * float("nan"))
    original(self, global_step)
    if fault == "hang" and global_step == step:
        pathlib.Path(ready).write_text(str(os.getpid()))
        threading.Event().wait()


train_lib.Loop.after_step = after_step
sys.argv = [sys.argv[0], *sys.argv[sys.argv.index("--") + 1:]]
train.main()
