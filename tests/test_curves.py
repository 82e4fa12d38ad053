"""curves.draw and scripts/plot_run.py: RUN/curves.png from hand-made steps.csv and validation.csv."""
import builtins
import subprocess
import sys

from conftest import ROOT
from trainer import curves

STEPS = """step,loss,accuracy,grad_norm,learning_rate,examples_per_sec,real_tokens_per_sec,padded_tokens_per_sec,padding_efficiency
4,0.70,0.50,2.1,0.001,,,,
8,0.65,0.60,1.4,0.0009,120.5,2700.0,3000.0,0.9
12,0.55,0.70,0.9,0.0006,80.0,2650.0,2950.0,0.898
16,0.50,0.75,0.7,0.0003,140.0,2720.0,3010.0,0.904
"""
VALIDATION = """step,loss,accuracy,f1,examples
8,0.66,0.58,0.55,64
16,0.52,0.73,0.71,64
"""


def is_png(path) -> bool:
    data = open(path, "rb").read()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_a_run_with_validation(tmp_path):
    (tmp_path / "steps.csv").write_text(STEPS)
    (tmp_path / "validation.csv").write_text(VALIDATION)
    path = curves.draw(str(tmp_path))
    assert path == str(tmp_path / "curves.png") and is_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "steps.csv", "validation.csv"]


def test_a_run_without_validation(tmp_path):
    (tmp_path / "steps.csv").write_text(STEPS)
    assert is_png(curves.draw(str(tmp_path)))


def test_nothing_to_draw_without_steps(tmp_path):
    (tmp_path / "steps.csv").write_text(STEPS.splitlines()[0] + "\n")      # the header only
    assert curves.draw(str(tmp_path)) is None and not (tmp_path / "curves.png").exists()


def test_nothing_drawn_without_matplotlib(tmp_path, monkeypatch):
    (tmp_path / "steps.csv").write_text(STEPS)
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert curves.draw(str(tmp_path)) is None and not (tmp_path / "curves.png").exists()


def test_plot_run_script(tmp_path):
    (tmp_path / "steps.csv").write_text(STEPS)
    script = str(ROOT / "scripts" / "plot_run.py")
    drawn = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0 and drawn.stdout == f"{tmp_path / 'curves.png'}\n" and is_png(tmp_path / "curves.png")
    missing = subprocess.run([sys.executable, script, str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and missing.stderr == f"error: {tmp_path / 'none'} holds no steps.csv: pass the " \
                                                         "--output_dir of a training run\n"
