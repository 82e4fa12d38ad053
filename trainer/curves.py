"""A picture of a run's curves: RUN/steps.csv and RUN/validation.csv -> RUN/curves.png.

Four panels over the global step: training loss and accuracy (the mean of each logged window) with the
validation points on top, the learning rate with the gradient's norm before clipping, and the throughput (examples/s, and real tokens/s, which
stays level when token-sized batches vary in rows). matplotlib is only in the test and bench extras:
without it nothing is drawn. It is imported here, lazily, and drawn with its Agg canvas (no pyplot,
no display, no global backend).
"""
import csv
import math
import os

from trainer import rundir

TITLE = {"y": 1.0, "pad": 14}   # placed above room for an axis' "1e-5", not fitted: half a drawing's time


def read_columns(path: str) -> dict[str, list[float]]:
    """Each column of a CSV as floats (NaN where a cell is empty); {} if the file is missing or has no rows."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {name: [_number(row.get(name)) for row in rows] for name in rows[0] if name is not None}


def _number(text) -> float:
    try:
        return float(text) if text else math.nan
    except (TypeError, ValueError):       # a row cut short by a kill
        return math.nan


def draw(run_dir: str) -> str | None:
    """Write RUN/curves.png from the run's CSVs (RUN a local directory: a bucket run's local mirror) and return
    its path; None, drawing nothing, without matplotlib or without a logged step."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    train = read_columns(os.path.join(run_dir, rundir.STEPS_CSV))
    if not train.get("step"):
        return None
    validation = read_columns(os.path.join(run_dir, rundir.VALIDATION_CSV))
    figure = Figure(figsize=(10, 6.5))      # laid out by hand: a layout engine took 1 s of 2
    (loss, accuracy), (learning_rate, throughput) = figure.subplots(2, 2, sharex=True)
    for axes, name in ((loss, "loss"), (accuracy, "accuracy")):
        axes.plot(train["step"], train[name], color="tab:blue", label=f"train {name} (window mean)")
        if validation:
            axes.plot(validation["step"], validation[name], "o-", color="tab:orange", label=f"validation {name}")
        axes.set_title(name, **TITLE)
    if validation.get("f1"):
        accuracy.plot(validation["step"], validation["f1"], "s--", color="tab:green", label="validation f1")
    learning_rate.plot(train["step"], train["learning_rate"], color="tab:purple")
    learning_rate.set_title("learning rate and gradient norm", **TITLE)
    learning_rate.set_ylabel("learning rate", color="tab:purple")
    learning_rate.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if train.get("grad_norm"):          # runs logged before clipping existed have no norm
        norm = learning_rate.twinx()
        norm.plot(train["step"], train["grad_norm"], color="tab:green")
        norm.set_ylabel("gradient norm before clipping", color="tab:green")
        norm.set_ylim(bottom=0)
    throughput.plot(train["step"], train["examples_per_sec"], color="tab:blue", label="examples/s")
    tokens = throughput.twinx()
    tokens.plot(train["step"], train["real_tokens_per_sec"], color="tab:red", label="real tokens/s")
    efficiency = [e for e in train.get("padding_efficiency", []) if not math.isnan(e)]
    throughput.set_title("throughput" + (f" (padding efficiency {sum(efficiency) / len(efficiency):.2f})"
                                         if efficiency else ""), **TITLE)
    throughput.set_ylabel("examples/s", color="tab:blue")
    tokens.set_ylabel("real tokens/s", color="tab:red")
    throughput.set_ylim(bottom=0)
    tokens.set_ylim(bottom=0)
    loss.legend(loc="upper right", fontsize="small")        # where the curves are not (not "best": slow)
    accuracy.legend(loc="lower right", fontsize="small")
    for axes in (learning_rate, throughput):
        axes.set_xlabel("step")
    figure.suptitle(os.path.normpath(run_dir))
    figure.subplots_adjust(left=0.08, right=0.91, bottom=0.08, top=0.9, wspace=0.5, hspace=0.25)
    path = os.path.join(run_dir, rundir.CURVES)
    staged = path + ".tmp"
    figure.savefig(staged, format="png", dpi=100)
    os.replace(staged, path)
    return path
