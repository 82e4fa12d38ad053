"""Model FLOPs and the peak they are measured against: MFU = model FLOPs/s / peak FLOP/s.

Training FLOPs per token of a BERT encoder at padded length T (PaLM, Chowdhery et al. 2022, appendix B; as
Kaplan et al. 2020 and nanoGPT's `estimate_mfu`):

    6 N + 12 L H T

N: the weights that multiply every token: the encoder layers, the pooler and the classifier (the pooler and
classifier see only the [CLS] token: counting them per token overstates MiniLM's FLOPs by 1.4%); not the word,
position and token-type tables, whose lookups are not matrix products. 6N: a multiply-add (2 FLOPs) per weight
per token forward, twice that backward. 12 L H T: the attention scores (Q K^T) and their weighted sum (A V), each
2 H T FLOPs per token and layer forward, x3 with the backward pass. L layers, H the hidden size. Counted on padded
tokens this is what the device computed; on real tokens (each sequence at its own length), what was useful.

The peak: a vendor datasheet figure for known accelerators (`PEAK_TFLOPS`), else (CPU, unknown device) the best
rate of a matrix product of BERT's shapes measured once per machine and precision and cached under the trainer's
cache directory, else what the caller passes (--peak_tflops). No TensorFlow import until a measurement.
"""
import datetime
import os
import platform
import re
import time

import numpy as np

# Dense (no sparsity) TFLOP/s per device from the vendors' datasheets, by what the run computes in: "none" is
# float32 matrix products as TensorFlow runs them (TF32 on Ampere and later, its default), "fp16"/"bf16" the
# tensor-core rate. TPUs: bf16 per chip (float32 products also run as bf16 passes by default). Most specific name
# first: a name matches as whole words of the device's name ('l4' is not 'L40S').
PEAK_TFLOPS = {
    "h200": {"none": 494.5, "fp16": 989.5, "bf16": 989.5},        # H200 SXM
    "h100 pcie": {"none": 378.0, "fp16": 756.0, "bf16": 756.0},
    "h100": {"none": 494.5, "fp16": 989.5, "bf16": 989.5},        # H100 SXM
    "a100": {"none": 156.0, "fp16": 312.0, "bf16": 312.0},
    "l4": {"none": 60.0, "fp16": 121.0, "bf16": 121.0},
    "v100": {"none": 15.7, "fp16": 125.0},                         # V100 SXM2 (PCIe: 14, 112); no bf16
    "t4": {"none": 8.1, "fp16": 65.0},                             # no bf16
    "tpu v6e": {p: 918.0 for p in ("none", "bf16")},
    "tpu v5p": {p: 459.0 for p in ("none", "bf16")},
    "tpu v5e": {p: 197.0 for p in ("none", "bf16")},
    "tpu v4": {p: 275.0 for p in ("none", "bf16")},
}
TPU_ALIASES = {"v6e": "tpu v6e", "v5p": "tpu v5p", "v5litepod": "tpu v5e", "v5 lite": "tpu v5e", "v5e": "tpu v5e",
               "v4": "tpu v4"}
CALIBRATION_SHAPE = (2048, 768, 3072)     # tokens x hidden x intermediate: BERT-base's feed-forward product
CACHE_FILE = "peak_flops.json"


def layer_params(hidden: int, intermediate: int) -> int:
    """Weights of one encoder layer: Q, K, V, O; the feed-forward pair; two LayerNorms."""
    h, i = hidden, intermediate
    return 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h


def non_embedding_params(config) -> int:
    """Weights of the encoder layers, the pooler and the classifier of a BERT-family config."""
    h, labels = config.hidden_size, config.num_labels
    return (config.num_hidden_layers * layer_params(h, config.intermediate_size) + (h * h + h)
            + (h * labels + labels))


def flops_per_token(config, length: int) -> float:
    """Training FLOPs per token at padded length `length`: 6 N + 12 L H T."""
    return 6 * non_embedding_params(config) + 12 * config.num_hidden_layers * config.hidden_size * length


def sequence_flops(config, lengths) -> float:
    """Training FLOPs of sequences of these lengths, each at its own length: sum of T (6 N + 12 L H T). Real
    tokens: the sequences' real lengths; padded: each row at its batch's padded length."""
    t = np.asarray(lengths, dtype=np.float64)
    attention = 12 * config.num_hidden_layers * config.hidden_size
    return float(np.sum(t * (6 * non_embedding_params(config) + attention * t)))


def padded_flops(config, rows, pad_lengths) -> float:
    """Training FLOPs of steps of rows[i] sequences padded to pad_lengths[i] (what the device computed)."""
    return sequence_flops(config, np.repeat(np.asarray(pad_lengths), np.asarray(rows)))


def step_flops(config, plan, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Per step of a batch plan, (real, padded) training FLOPs: real at each example's own length
    (`lengths`, already clipped to max_length), padded at each shard slice's rows x padded length (a
    packed row's attention spans all of max_length, block-diagonal mask or not). One pass over the
    plan."""
    per_token, attention = 6 * non_embedding_params(config), 12 * config.num_hidden_layers * config.hidden_size
    t = np.asarray(lengths, dtype=np.float64)[plan.rows]
    row_sums = np.concatenate([[0.0], np.cumsum(t * (per_token + attention * t))])
    real = np.diff(row_sums[np.concatenate([[0], np.cumsum(plan.examples)])])
    p = plan.pad_lengths.astype(np.float64)
    return real, (plan.batch_rows[:, None] * p * (per_token + attention * p)).sum(axis=1)


def plan_flops(config, plan, lengths, steps: slice) -> tuple[float, float]:
    """(real, padded) training FLOPs of a batch plan's steps."""
    real, padded = step_flops(config, plan, lengths)
    return float(real[steps].sum()), float(padded[steps].sum())


def mfu(model_flops_per_sec: float, peak_flops_per_sec: float) -> float:
    return model_flops_per_sec / peak_flops_per_sec


def device_name(strategy=None) -> str:
    """'TPU ' + the TPU VM's TPU_ACCELERATOR_TYPE ('TPU v5litepod-8'), the first GPU's name ('NVIDIA
    A100-SXM4-40GB'), or 'cpu'."""
    import tensorflow as tf
    if strategy is not None and isinstance(strategy, tf.distribute.TPUStrategy):
        kind = os.environ.get("TPU_ACCELERATOR_TYPE", "tpu")    # set on Cloud TPU VMs, e.g. v5litepod-8
        return f"TPU {kind}"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")
    return "cpu"


def table_peak(name: str, precision: str) -> tuple[float, str] | None:
    """(FLOP/s, 'table: A100 bf16') for a known device name in `precision`, or None."""
    name = name.lower()
    if "tpu" in name:
        name = next((key for alias, key in TPU_ALIASES.items() if alias in name), name)
    for key, peaks in PEAK_TFLOPS.items():
        if re.search(rf"\b{key}\b", name) and precision in peaks:
            return peaks[precision] * 1e12, f"table: {key.upper()} {precision}"
    return None


def peak_flops(precision: str, name: str = "cpu", override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for a run in `precision` ('none', 'fp16', 'bf16') on device `name`:
    the override, the table, or this machine's cached (else measured) matrix-product rate. An unknown TPU: NaN
    (the host's CPU says nothing of it)."""
    if override_tflops:
        return override_tflops * 1e12, "flag"
    found = table_peak(name, precision)
    if found:
        return found
    if "tpu" in name.lower():
        return float("nan"), f"unknown: {name} is not in the table: pass --peak_tflops"
    rate, when, cached = calibrated("matmul", precision)
    return rate, f"calibrated: {'cached ' if cached else ''}{when} {machine()} {precision} matmul"


def machine() -> str:
    """CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


# The CPU features that decide a matrix product's rate in float32 and bf16: two CPUs sold under one name (an
# "AMD EPYC" may be a Zen 3 without bf16 or a Zen 4 with it) differ in these, and so in their cache entries.
DECIDING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                  "amx_fp16")
BUSY_LOAD = 0.5          # load average per core above which a measurement is taken again on a quieter machine


def cache_key(kind: str, precision: str) -> str:
    """What decides a calibration: the kind and precision, the CPU model and cores, the deciding CPU flags, and
    the TensorFlow version (its oneDNN kernels)."""
    import tensorflow as tf
    deciding = ",".join(sorted(set(DECIDING_FLAGS) & cpu_flags())) or "none"
    return f"{kind} | {machine()} | flags {deciding} | tensorflow {tf.__version__} | {precision}"


def load_per_core() -> float:
    """The 1-minute load average per core (0 where the system does not report it)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def calibrated(kind: str, precision: str, fresh: bool = False) -> tuple[float, str, bool]:
    """(value, when and under what load measured, whether it came from the cache) of MEASURES[kind] in
    `precision` on this machine ('matmul': FLOP/s; 'step speedup': a train step's speed over float32's),
    cached under `cache_key`. An entry measured while the machine was busy (load per core above BUSY_LOAD) is
    measured again once the machine is quieter than it was then; `fresh` measures again in any case
    (trainer-calibrate)."""
    from trainer import storage
    path, key = os.path.join(storage.CACHE, CACHE_FILE), cache_key(kind, precision)
    cache = storage.read_json(path)
    cache = cache if isinstance(cache, dict) else {}
    entry, load = cache.get(key), load_per_core()
    usable = isinstance(entry, dict) and isinstance(entry.get("value"), (int, float)) and isinstance(
        entry.get("measured"), str) and isinstance(entry.get("load_per_core"), (int, float))
    if usable and not fresh and not (entry["load_per_core"] > BUSY_LOAD and load < entry["load_per_core"]):
        return entry["value"], _when(entry), True
    entry = {"value": MEASURES[kind](precision), "load_per_core": round(load, 2),
             "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    cache[key] = entry
    storage.write_json(path, cache)
    return entry["value"], _when(entry), False


def _when(entry: dict) -> str:
    return f"{entry['measured']} at load {entry['load_per_core']:.2f}/core"


def _best_seconds(function, reps: int) -> float:
    function()                                   # trace
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def measure_matmul(precision: str, reps: int = 10) -> float:
    """Best FLOP/s of a (2048 x 768) @ (768 x 3072) product in the precision's compute dtype (~0.1 s per rep)."""
    import tensorflow as tf
    dtype = {"none": tf.float32, "fp16": tf.float16, "bf16": tf.bfloat16}[precision]
    m, k, n = CALIBRATION_SHAPE
    a, b = tf.cast(tf.random.normal((m, k)), dtype), tf.cast(tf.random.normal((k, n)), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[0, :1], tf.float32)))
    return 2 * m * k * n / _best_seconds(lambda: float(product()), reps)


def measure_step_speedup(precision: str, reps: int = 10) -> float:
    """Best-step speed in `precision` over float32's of a training step (forward, backward, Adam) of one
    MiniLM-sized BERT layer on 32 x 64 tokens: matrix products, softmax, LayerNorm, GELU and the policy's casts,
    as in a run. The two alternate step by step, so both see the same load."""
    import tensorflow as tf
    import tf_keras
    import transformers
    from transformers.models.bert.modeling_tf_bert import TFBertLayer
    from trainer.config import KERAS_POLICY
    config = transformers.BertConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536)
    x = tf.random.normal((32, 64, config.hidden_size))
    previous, steps = tf_keras.mixed_precision.global_policy(), []
    try:
        for policy in ("float32", KERAS_POLICY[precision]):
            tf_keras.mixed_precision.set_global_policy(policy)
            layer, optimizer = TFBertLayer(config), tf_keras.optimizers.Adam(1e-5)

            @tf.function
            def step(layer=layer, optimizer=optimizer):
                with tf.GradientTape() as tape:
                    out = layer(x, None, None, None, None, None, False, training=True)[0]
                    loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32)))
                variables = layer.trainable_variables
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return loss
            float(step())                      # trace
            steps.append(step)
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
    best = [float("inf")] * 2
    for _ in range(reps):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            float(step())
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


MEASURES = {"matmul": measure_matmul, "step speedup": measure_step_speedup}
