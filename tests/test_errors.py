"""Bad input of every class the hardening issue names, through the real commands. Each case must end in exit
status 2 and exactly one stderr line, `error: ...`, naming the problem; the inputs stay byte-identical and
nothing appears at or beside the output path (the whole workspace holding inputs and outputs is hashed before
and after). Concurrent runs and non-finite weights are in test_resume.py; they assert the same."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

import commands
from conftest import MINILM, ROOT, SAMPLE_CSV, write_sentiment140

RAW_ROWS = [(0, "awful day"), (4, "lovely day"), (0, "so sad"), (4, "great news")] * 10


@pytest.fixture(scope="session")
def template(tmp_path_factory, small_prepared, tiny_model_dir, one_device_run):
    """raw.csv, data/ (prepared), model/ (tiny BERT), export/ (a fine-tuned model), notes/ (a user's directory)."""
    root = tmp_path_factory.mktemp("template")
    write_sentiment140(root / "raw.csv", RAW_ROWS)
    shutil.copytree(small_prepared, root / "data")
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copytree(one_device_run[0] / "export", root / "export")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me\n")
    (root / "file.txt").write_text("a file, not a directory\n")
    (root / "metrics-old.csv").write_text("not metrics\n")
    return root


@pytest.fixture
def ws(tmp_path, template):
    shutil.copytree(template, tmp_path / "ws", symlinks=True)
    return tmp_path / "ws"


def snapshot(root) -> dict:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                found[relative] = "dir"
            elif not os.path.isfile(path):
                found[relative] = "special"      # a pipe: never opened
            else:
                with open(path, "rb") as f:
                    found[relative] = hashlib.sha256(f.read()).hexdigest()
    return found


def command(name, *args):
    return [sys.executable, "-m", f"trainer.cli.{name}", *args]


def prepare(*args, output="{ws}/out", raw="{ws}/raw.csv", model="{ws}/model"):
    return command("prepare", f"--input={raw}", f"--model={model}", f"--output_dir={output}", *args)


def train(*args, output="{ws}/run", data="{ws}/data", model="{ws}/model"):
    return command("train", f"--data_dir={data}", f"--model={model}", f"--output_dir={output}",
                   "--strategy=one_device", *args)


def evaluate(*args):
    return command("evaluate", "--model_dir={ws}/export", *args)


def damage(relative, how):
    """A setup step: damage one file of the workspace's copy."""
    def apply(ws):
        path = ws / relative
        if how == "garbage":
            path.write_bytes(b"\x00garbage\xff" * 200)
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
        elif how == "flip":
            content = bytearray(path.read_bytes())
            content[len(content) // 2] ^= 0xFF
            path.write_bytes(bytes(content))
        elif how == "delete":
            path.unlink()
    return apply


def empty_model(ws):
    shutil.rmtree(ws / "model")
    (ws / "model").mkdir()


def config_only_model(ws):
    for path in (ws / "model").iterdir():
        if path.name != "config.json":
            path.unlink()


def damaged_safetensors(ws):
    (ws / "minilm").mkdir()
    for path in MINILM.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, ws / "minilm" / path.name)
    (ws / "minilm" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken")


def link_to_raw(ws):
    os.symlink(ws / "raw.csv", ws / "link.csv")


def flagfile_without_dashes(ws):
    (ws / "preset.cfg").write_text("--max_length=32\nsplits=0.5,0.25,0.25\n")


def data_without_validation(ws):
    shutil.copytree(ws / "data", ws / "noval")
    manifest = (ws / "noval" / "manifest.json")
    import json
    content = json.loads(manifest.read_text())
    content["splits"].pop("validation")
    manifest.write_text(json.dumps(content))


def utf16_file(ws):
    (ws / "u16.tsv").write_bytes("great\t1\nbad\t0\n".encode("utf-16"))


def latin1_file(ws):
    (ws / "latin1.tsv").write_bytes("caf\xe9 great\t1\nbad\t0\n".encode("latin-1"))


def unknown_label(ws):
    write_sentiment140(ws / "seven.csv", [(0, "ok"), (7, "what")])


def empty_file(ws):
    (ws / "empty.csv").write_text("")


def fake_run(ws):
    (ws / "oldrun").mkdir()
    (ws / "oldrun" / "run.json").write_text('{"format": 1, "settings": {"seed": 1}}')
    (ws / "oldrun" / "metrics.json").write_text('{"accuracy": 0.5}')


def empty_manifest(ws):
    (ws / "notes" / "manifest.json").write_text("{}")


def data_with_a_user_file(ws):
    shutil.copytree(ws / "data", ws / "data2")
    (ws / "data2" / "mine.txt").write_text("keep me\n")


def dangling_link(ws):
    os.symlink(ws / "nowhere", ws / "dangling")


def fifo(ws):
    os.mkfifo(ws / "fifo")


def self_including_flagfile(ws):
    (ws / "a.cfg").write_text("--max_length=32\n--flagfile " + str(ws / "b.cfg") + "\n")
    os.symlink(ws / "a.cfg", ws / "b.cfg")


def comma_csv(ws):
    (ws / "rows.csv").write_text("text,label\ngood,1\nbad,0\n")


def pipe_at(relative):
    def apply(ws):
        (ws / relative).unlink()
        os.mkfifo(ws / relative)
    return apply


def export_with_nan_weights(ws):
    import h5py
    import numpy as np
    with h5py.File(ws / "export" / "tf_model.h5", "r+") as f:
        kernels = []
        f.visititems(lambda name, item: kernels.append(name) if name.endswith("classifier/kernel:0") else None)
        f[kernels[0]][...] = np.nan


def edit_json(relative, **changes):
    def apply(ws):
        import json
        path = ws / relative
        content = json.loads(path.read_text())
        for key, value in changes.items():
            target = content
            *parents, last = key.split(".")
            for parent in parents:
                target = target[parent]
            target[last] = value
        path.write_text(json.dumps(content))
    return apply


def export_without_unk(ws):
    import json
    tokenizer = json.loads((ws / "export" / "tokenizer.json").read_text())
    del tokenizer["model"]["vocab"]["[UNK]"]
    (ws / "export" / "tokenizer.json").write_text(json.dumps(tokenizer))


BIG = str(2**63)
CASES = {
    # round 4: the steering flags
    "no micro-batch": (train("--gradient_accumulation_steps=0"), "--gradient_accumulation_steps=0: must be >= 1"),
    "a negative norm bound": (train("--max_grad_norm=-1"), "--max_grad_norm=-1.0: must be >= 0.0"),
    "negative recovery trials": (train("--recovery_max_trials=-1"), "--recovery_max_trials=-1: must be >= 0"),
    "a loss bound that is no number": (train("--loss_upper_bound=nan"), "--loss_upper_bound=nan: must be a finite"),
    # round 4: files that are not regular files, exports and data trusted blindly
    "a pipe as the data's manifest": (train(), "data/manifest.json is not a regular file (a pipe, device or socket)",
                                      pipe_at("data/manifest.json")),
    "a pipe as an arrow file": (evaluate("--data_dir={ws}/data"), "test/data-00000-of-00001.arrow is not a regular",
                                pipe_at("data/test/data-00000-of-00001.arrow")),
    "a pipe as an export's config": (command("predict", "--model_dir={ws}/export", "hi"),
                                     "export/config.json is not a regular file", pipe_at("export/config.json")),
    "a pipe as an export's weights": (evaluate("--data_dir={ws}/data"), "export/tf_model.h5 is not a regular file",
                                      pipe_at("export/tf_model.h5")),
    "an export with nan weights, evaluated": (evaluate("--data_dir={ws}/data"),
                                              "export/tf_model.h5 holds weights that are not finite",
                                              export_with_nan_weights),
    "an export with nan weights, predicting": (command("predict", "--model_dir={ws}/export", "hi"),
                                               "holds weights that are not finite", export_with_nan_weights),
    "an export whose config contradicts its weights": (
        evaluate("--data_dir={ws}/data"), "export/config.json does not match its weights (",
        edit_json("export/config.json", intermediate_size=128)),
    "an export with fewer layers than its weights": (
        command("predict", "--model_dir={ws}/export", "hi"), "is not in the model the config describes",
        edit_json("export/config.json", num_hidden_layers=1)),
    "an export whose vocabulary has no [UNK]": (evaluate("--data_dir={ws}/data"), "cannot encode an unknown word",
                                                export_without_unk),
    "an export whose config has fewer tokens than its tokenizer": (
        command("predict", "--model_dir={ws}/export", "hi"), "tokenizer has 1000 tokens but its config.json's "
        "vocab_size is 900", edit_json("export/config.json", vocab_size=900)),
    "data of another tokenizer, evaluated": (evaluate("--data_dir={ws}/data"), "tokenizer differs from the one "
                                             "{ws}/data was prepared with",
                                             edit_json("data/manifest.json", **{"settings.tokenizer": "0" * 16})),
    "data longer than the model's positions, evaluated": (evaluate("--data_dir={ws}/data"),
                                                          "was prepared at max_length 600, above the",
                                                          edit_json("data/manifest.json", max_length=600)),
    "pad_to_multiple_of that pads past max_length": (train("--pad_to_multiple_of=48"),
                                                     "would pad rows of 64 tokens to 96, past --max_length=64: pass "
                                                     "--max_length=48"),
    # round 3: outputs that replace what is not theirs
    "evaluate output inside a training run": (evaluate("--data_dir={ws}/data", "--output={ws}/oldrun/metrics.json"),
                                              "lies inside a training run", fake_run),
    "prepare over a directory whose manifest is {}": (prepare("--overwrite", output="{ws}/notes"),
                                                      "is not a prepared dataset", empty_manifest),
    "prepare over a dataset holding a user's file": (prepare("--overwrite", output="{ws}/data2"),
                                                     "holds files that are not part of its prepared dataset (mine.txt)",
                                                     data_with_a_user_file),
    "train over its data through a file:// URL": (train("--overwrite_output_dir", output="file://{ws}/data"),
                                                  "is the input --data_dir="),
    "prepare into a dangling symlink": (prepare(output="{ws}/dangling"), "is a symlink to", dangling_link),
    "evaluate output to a device": (evaluate("--data_dir={ws}/data", "--output=/dev/full"), "is a device or special file"),
    # round 3: inputs that are not regular files, values that are not what they claim
    "an input that is a device": (prepare(raw="/dev/zero"), "is not a regular file"),
    "an input that is a pipe": (prepare(raw="{ws}/fifo"), "is not a regular file", fifo),
    "an encoding that is no text encoding": (prepare("--encoding=undefined"), "--encoding=undefined: not a text encoding"),
    "a codec that is a transform": (prepare("--encoding=rot13"), "not a text encoding"),
    "a column given as a superscript digit": (prepare("--format=csv", "--text_column=\u00b2", "--label_column=label",
                                                      raw="{ws}/rows.csv"), "no column '\u00b2'", comma_csv),
    "steps_per_execution at 2**63": (train(f"--steps_per_execution={BIG}"), "must be <= 2147483647"),
    "evaluate batch_size at 2**63": (evaluate("--data_dir={ws}/data", f"--batch_size={BIG}"), "must be <= 2147483647"),
    "a TPU named with strategy auto": (train("--strategy=auto", "--tpu=local"), "no TPU found at --tpu=local"),
    "a flag file including itself through a link": (train("--flagfile", "{ws}/a.cfg"), "includes itself",
                                                    self_including_flagfile),
    # round 3: one line, always
    "a newline inside a path": (train(data="{ws}/da\nta"), "{ws}/da\\nta is not a prepared dataset"),
    "every required flag missing": (command("train"), "--data_dir, --model, --output_dir are required"),
    "predict from a missing model directory": (command("predict", "--model_dir={ws}/nope", "hi"),
                                               "pass --model_dir=<local directory>"),

    # 1. outputs that would destroy inputs
    "prepare into its input file": (prepare("--overwrite", output="{ws}/raw.csv"), "is the input --input="),
    "prepare into the directory holding its input": (prepare("--overwrite", output="{ws}"), "holds the input"),
    "prepare into the model directory": (prepare("--overwrite", output="{ws}/model"), "is the input --model="),
    "prepare inside the model directory": (prepare(output="{ws}/model/data"), "lies inside the input --model="),
    "prepare through a symlink to its input": (prepare("--overwrite", output="{ws}/link.csv"), "is the input --input=",
                                               link_to_raw),
    "prepare over a user's directory": (prepare("--overwrite", output="{ws}/notes"), "is not a prepared dataset"),
    "split name escaping the output": (prepare("--split_name=../escaped"), "split name is a plain name"),
    "split name an absolute path": (prepare("--split_name=/tmp/escaped"), "split name is a plain name"),
    "prepare to an empty output path": (prepare(output=""), "--output_dir is empty"),
    "train to an empty output path": (train(output=""), "--output_dir is empty"),
    "train into the data": (train(output="{ws}/data"), "is the input --data_dir="),
    "train inside the data": (train(output="{ws}/data/run"), "lies inside the input --data_dir="),
    "train into the model": (train(output="{ws}/model"), "is the input --model="),
    "train into the directory holding data and model": (train(output="{ws}"), "holds the input"),
    "train into a user's directory": (train(output="{ws}/notes"), "is not empty and holds no training run"),
    "evaluate output over its input": (evaluate("--input={ws}/raw.csv", "--output={ws}/raw.csv"),
                                       "is the input --input="),
    "evaluate output inside the model": (evaluate("--data_dir={ws}/data", "--output={ws}/export/config.json"),
                                         "lies inside the input --model_dir="),
    "evaluate output inside the data": (evaluate("--data_dir={ws}/data", "--output={ws}/data/manifest.json"),
                                        "lies inside the input --data_dir="),
    "evaluate output over a file that is not metrics": (evaluate("--data_dir={ws}/data", "--output={ws}/metrics-old.csv"),
                                                        "exists and is not a metrics file"),
    # 4. flags that parse but are nonsense
    "warmup ratio nan": (train("--warmup_ratio=nan"), "--warmup_ratio=nan: must be a finite number"),
    "classifier dropout nan": (train("--classifier_dropout=nan"), "--classifier_dropout=nan: must be a finite number"),
    "weight decay nan": (train("--weight_decay=nan"), "--weight_decay=nan: must be a finite number"),
    "learning rate inf": (train("--learning_rate=inf"), "--learning_rate=inf: must be a finite number"),
    "learning rate beyond float32": (train("--learning_rate=1e39"), "must be a finite number"),
    "splits with nan": (prepare("--splits=nan,0.5,0.5"), "--splits=nan,0.5,0.5: must be a finite number"),
    "splits not three": (prepare("--splits=0.5,0.5"), "give 3 comma-separated numbers"),
    "negative seed": (prepare("--seed=-1"), "--seed=-1: must be in [0, 4294967295]"),
    "seed beyond 2**32-1": (train("--seed=4294967296"), "--seed=4294967296: must be in [0, 4294967295]"),
    "pad_to_multiple_of above max_length": (train("--pad_to_multiple_of=128", "--max_length=64"),
                                            "--pad_to_multiple_of=128 is above --max_length=64"),
    "pad_to_multiple_of above the data's length": (train("--pad_to_multiple_of=128"),
                                                   "--pad_to_multiple_of=128 is above --max_length=64: lower it"),
    "a stray positional argument": (prepare("--keep_neutral", "false"), "unexpected argument 'false'"),
    "a flag file line without dashes": (prepare("--flagfile={ws}/preset.cfg"),
                                        "line 2: 'splits=0.5,0.25,0.25' is not a flag", flagfile_without_dashes),
    "a missing flag file": (train("--flagfile={ws}/nope.cfg"), "--flagfile={ws}/nope.cfg: cannot read it"),
    "an unknown flag": (train("--epoch=3"), "Unknown command line flag 'epoch'"),
    "a number flag given text": (train("--per_replica_batch_size=abc"), "per_replica_batch_size"),
    "an unknown padding": (train("--padding=dynamic"), "--padding"),
    "a malformed step range": (train("--profile_steps=5"), "--profile_steps=5: give START,STOP"),
    "token batches without bucket padding": (train("--batch_tokens=4096", "--padding=batch"), "--batch_tokens"),
    "best export without validation": (train("--export=best", data="{ws}/noval"), "need a validation split",
                                       data_without_validation),
    "evaluate split escaping": (evaluate("--data_dir={ws}/data", "--split=../train"), "split name is a plain name"),
    "evaluate with both sources": (evaluate("--data_dir={ws}/data", "--input={ws}/raw.csv"), "exactly one of"),
    "predict max_length not a number": (command("predict", "--model_dir={ws}/export", "--max_length=nan", "hi"),
                                        "--max_length"),
    # 5. corrupt or unusable files
    "garbage tf_model.h5": (train(), "tf_model.h5 is damaged", damage("model/tf_model.h5", "garbage")),
    "truncated tf_model.h5": (train(), "tf_model.h5 is damaged", damage("model/tf_model.h5", "truncate")),
    "garbage tokenizer.json": (train(), "tokenizer.json is damaged", damage("model/tokenizer.json", "garbage")),
    "garbage config.json": (train(), "holds no usable config.json", damage("model/config.json", "garbage")),
    "an empty model directory": (train(), "holds no usable config.json", empty_model),
    "a model without weights or tokenizer": (train(), "holds no usable tokenizer", config_only_model),
    "garbage model.safetensors": (train(model="{ws}/minilm"), "model.safetensors is damaged", damaged_safetensors),
    "a truncated arrow file": (train(), "is damaged (train/data-00000-of-00001.arrow has",
                               damage("data/train/data-00000-of-00001.arrow", "truncate")),
    "a corrupted arrow file": (train(), "does not match its sha256",
                               damage("data/train/data-00000-of-00001.arrow", "flip")),
    "a deleted split file": (evaluate("--data_dir={ws}/data"), "test/state.json is missing",
                             damage("data/test/state.json", "delete")),
    "a garbage manifest": (train(), "manifest.json is damaged", damage("data/manifest.json", "garbage")),
    "garbage export weights": (evaluate("--data_dir={ws}/data"), "tf_model.h5 is damaged",
                               damage("export/tf_model.h5", "garbage")),
    "predict from a missing model": (command("predict", "--model_dir={ws}/nope", "hi"), "does not exist"),
    "evaluate on unprepared data": (evaluate("--data_dir={ws}/notes"), "is not a prepared dataset"),
    # 6. the operating system says no
    "prepare to a path that is a file": (prepare(output="{ws}/file.txt"), "is a file: pass a directory"),
    "train to a path that is a file": (train(output="{ws}/file.txt"), "is a file: pass a directory"),
    "prepare below a file": (prepare(output="{ws}/file.txt/out"), "is a file, not a directory"),
    "evaluate output that is a directory": (evaluate("--data_dir={ws}/data", "--output={ws}/notes"),
                                            "is a directory: pass a file path"),
    # 7. text edge cases and unreadable inputs
    "a UTF-16 file": (prepare("--format=tsv", "--text_column=0", "--label_column=1", raw="{ws}/u16.tsv"),
                      "UTF-16 byte-order mark: pass --encoding=utf-16", utf16_file),
    "latin-1 bytes read as UTF-8": (prepare("--format=tsv", "--text_column=0", "--label_column=1",
                                            raw="{ws}/latin1.tsv"), "--encoding=latin-1", latin1_file),
    "an unknown label": (prepare(raw="{ws}/seven.csv"), "line 2: unknown label '7'", unknown_label),
    "an empty input file": (prepare(raw="{ws}/empty.csv"), "is empty", empty_file),
    "an input that is a directory": (prepare(raw="{ws}/notes"), "is a directory"),
    # refused once TensorFlow runs: the run directory it made is removed again
    "a TPU that is not there": (train("--strategy=tpu", "--tpu=local"), "no TPU found at --tpu=local"),
    "more GPUs than there are": (train("--strategy=mirrored", "--num_gpus=2"), "--num_gpus=2 but 0 GPU(s)"),
    "a profile outside the run": (train("--profile_steps=40,50", "--epochs=1"), "lies outside this run's steps 1..16"),
}


# One case per command, and one refused once TensorFlow runs, in a fresh process (run_case): the one stderr line is
# proven of a real process end to end. The others run in a child of a fork server (fork_case), which has imported
# transformers and datasets already.
FRESH = {"an unknown label", "garbage tokenizer.json", "a deleted split file", "a profile outside the run",
         "an export whose config has fewer tokens than its tokenizer"}
assert FRESH <= CASES.keys()


def run_case(args, ws, prefix=()):
    args = [arg.replace("{ws}", str(ws)) for arg in args]
    result = subprocess.run([*prefix, *args], capture_output=True, timeout=600, cwd=ws.parent,
                            stdin=subprocess.DEVNULL)
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def forkserver():
    """The fork server of this pytest-xdist worker (tests/commands.py), started at its first case; it ends with it."""
    return commands.start()


def fork_case(args, ws, server):
    """run_case's answer, from a child of the fork server running the same command."""
    python, dash_m, module, *rest = [arg.replace("{ws}", str(ws)) for arg in args]
    assert (python, dash_m) == (sys.executable, "-m"), args
    return commands.run(server, module, rest, cwd=ws.parent, timeout=600)


def assert_refused(status, stderr, message, ws):
    lines = stderr.splitlines()
    assert status == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert message.replace("{ws}", str(ws)) in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(case, ws, request):
    args, message, *setup = CASES[case]
    for step in setup:
        step(ws)
    before = snapshot(ws.parent)
    if case in FRESH:
        status, _, stderr = run_case(args, ws)
    else:
        status, _, stderr = fork_case(args, ws, request.getfixturevalue("forkserver"))
    assert_refused(status, stderr, message, ws)
    assert snapshot(ws.parent) == before


def test_invalid_utf8_on_predicts_stdin(ws):
    before = snapshot(ws.parent)
    result = subprocess.run(command("predict", f"--model_dir={ws}/export"), input=b"fine\n\xff\xfe broken\n",
                            capture_output=True, timeout=300)
    assert_refused(result.returncode, result.stderr.decode(), "stdin: bytes not valid utf-8 near byte 5", ws)
    assert snapshot(ws.parent) == before


@pytest.fixture(scope="module")
def namespaces():
    """Commands run in a private mount namespace (unshare -m) see a read-only or a full file system that
    vanishes with them. Needs root or user namespaces; where the OS allows neither, these tests are skipped."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespaces here (unshare -m): the read-only and full-disk cases need them")


def in_namespace(mount: str, after: str = "true"):
    """sh -c: set up a mount, run the command ("$@"), then `after`, keeping the command's exit status."""
    return ["unshare", "-m", "sh", "-c", f'{mount} && {{ "$@"; status=$?; {after}; exit $status; }}', "sh"]


READ_ONLY = 'mount --bind "$D" "$D" && mount -o remount,bind,ro "$D"'


@pytest.mark.parametrize("args, message", [
    (prepare(output="{ws}/ro/out"), "cannot write in {ws}/ro (read-only file system)"),
    (train(output="{ws}/ro/run"), "cannot write in {ws}/ro (read-only file system)"),
    (evaluate("--data_dir={ws}/data", "--output={ws}/ro/m.json"), "cannot write in {ws}/ro (read-only file system)"),
], ids=["prepare", "train", "evaluate"])
def test_read_only_file_system(args, message, ws, namespaces):
    (ws / "ro").mkdir()
    before = snapshot(ws.parent)
    status, _, stderr = run_case(args, ws, in_namespace(READ_ONLY.replace("$D", str(ws / "ro"))))
    assert_refused(status, stderr, message, ws)
    assert snapshot(ws.parent) == before


@pytest.mark.parametrize("kind", ["prepare", "evaluate"])
def test_full_disk_mid_write(kind, ws, namespaces, tmp_path_factory):
    """The checks pass (the disk is writable), then a write fails with ENOSPC: one line naming the path, and
    the staging files are gone from the full disk afterwards."""
    (ws / "full").mkdir()
    shutil.copy(SAMPLE_CSV, ws / "sample.csv")        # 3 MB of rows: more than the disk holds
    listing = tmp_path_factory.mktemp("listing") / "listing"       # outside the hashed workspace
    fill = '{ head -c 1000000 /dev/zero > "$D/filler" 2>/dev/null; true; }' if kind == "evaluate" else "true"
    mount = f'mount -t tmpfs -o size=64k tmpfs "$D" && {fill}'.replace("$D", str(ws / "full"))
    args = (prepare(raw="{ws}/sample.csv", output="{ws}/full/out") if kind == "prepare" else
            evaluate("--data_dir={ws}/data", "--output={ws}/full/m.json"))
    before = snapshot(ws.parent)
    status, _, stderr = run_case(args, ws, in_namespace(mount, f'ls -A "{ws / "full"}" > "{listing}"'))
    assert_refused(status, stderr, f"{ws}/full", ws)
    assert "No space left on device" in stderr
    assert listing.read_text().split() == ([] if kind == "prepare" else ["filler"])   # nothing staged is left
    assert snapshot(ws.parent) == before


def test_help_answers_at_once_with_exit_0_before_tensorflow_loads():
    for name in ("prepare", "train", "evaluate", "predict"):
        result = subprocess.run(command(name, "--help"), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stderr == "" and "flags:" in result.stdout
        probe = (f"import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n"
                 f"    runpy.run_module('trainer.cli.{name}', run_name='__main__')\n"
                 f"except SystemExit as e:\n    print('tensorflow' in sys.modules, e.code)")
        assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              cwd=ROOT).stdout.splitlines()[-1] == "False 0"


def test_predict_from_a_never_ending_stdin_is_one_line(ws):
    before = snapshot(ws.parent)
    with open("/dev/zero", "rb") as zeros:
        result = subprocess.run(command("predict", f"--model_dir={ws}/export"), stdin=zeros, capture_output=True,
                                timeout=300)
    assert_refused(result.returncode, result.stderr.decode(), "stdin holds more than 256 MiB", ws)
    assert snapshot(ws.parent) == before


@pytest.mark.slow
def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_the_rerun_resumes(ws, namespaces, tmp_path_factory):
    """The run directory's disk has room for the run's logs but not its first checkpoint: one line naming the
    path and the disk, exit 2. Once there is room, the same command resumes and finishes."""
    report = tmp_path_factory.mktemp("report")                  # outside the hashed workspace
    full = ws / "full"
    full.mkdir()
    args = [a.replace("{ws}", str(ws)) for a in train("--max_steps=4", "--checkpoint_every_steps=2",
                                                       "--mixed_precision=none", output=f"{full}/run")]
    script = (f'mount -t tmpfs -o size=160k tmpfs "{full}" && '
              f'{{ "$@" 2> "{report}/first.err"; echo $? > "{report}/first.status"; '
              f'mount -o remount,size=64m "{full}"; "$@" > /dev/null 2> "{report}/second.err"; '
              f'echo $? > "{report}/second.status"; ls "{full}/run" > "{report}/listing"; }}')
    before = snapshot(ws.parent)
    subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *args], capture_output=True, timeout=900,
                   cwd=ws.parent, stdin=subprocess.DEVNULL)
    first = (report / "first.err").read_text()
    assert_refused(int((report / "first.status").read_text()), first, f"{full}/run/checkpoints: No space left on "
                   f"device (the file system mounted at {full} is full): free some space", ws)
    assert (report / "second.status").read_text().strip() == "0", (report / "second.err").read_text()[-2000:]
    assert "metrics.json" in (report / "listing").read_text().split()
    assert snapshot(ws.parent) == before
