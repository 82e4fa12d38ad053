"""runtime: the cluster read from TF_CONFIG before TensorFlow starts, free loopback ports, accelerator detection."""
import json
import socket

import pytest

from trainer import runtime
from trainer.errors import UsageError


def tf_config(cluster, kind="worker", index=0):
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize("cluster, kind, index, expected", [
    ({"worker": ["a:1"]}, "worker", 0, (1, 0)),
    ({"worker": ["a:1", "b:2", "c:3"]}, "worker", 2, (3, 2)),
    ({"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "chief", 0, (3, 0)),     # the chief is index 0
    ({"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "worker", 0, (3, 1)),    # workers follow it
    ({"worker": ["a:1", "b:2"], "ps": ["p:9"]}, "worker", "1", (2, 1)),     # other jobs are not workers
])
def test_workers_and_index_from_tf_config(monkeypatch, cluster, kind, index, expected):
    monkeypatch.setenv("TF_CONFIG", tf_config(cluster, kind, index))
    assert runtime.multi_worker_task() == expected


@pytest.mark.parametrize("text, message", [
    (None, "--strategy=multi_worker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG must be JSON like"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG must be JSON like"),
    (json.dumps({"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}), "TF_CONFIG must be JSON like"),
    (tf_config({"worker": "a:1,b:2"}), r"TF_CONFIG's cluster worker must be a list of \"host:port\" strings, "
                                       r"not \"a:1,b:2\": write it as"),
    (tf_config({"chief": [1], "worker": ["a:1"]}), "TF_CONFIG's cluster chief must be a list"),
    (tf_config({"worker": ["a:1"]}, index=1), "TF_CONFIG's task worker/1 is not in its cluster of 1 worker"),
    (tf_config({"worker": ["a:1"]}, kind="ps"), "TF_CONFIG's task ps/0 is not in its cluster"),
])
def test_bad_tf_config_is_one_line(monkeypatch, text, message):
    if text is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(UsageError, match=message) as error:
        runtime.multi_worker_task()
    assert "\n" not in str(error.value)


def test_free_ports_are_distinct_and_bindable():
    ports = runtime.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_named_tpu_counts_as_an_accelerator(monkeypatch):
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert runtime.accelerators_present()
