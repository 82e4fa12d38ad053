r"""trainer-calibrate: measure this machine's CPU figures anew and cache them.

  trainer-calibrate

Measures the peak matrix-product rate in float32 and bf16 (MFU's denominator on a CPU) and the speed of a
bf16 train step over float32's (what --mixed_precision=auto decides by on a CPU with bf16 instructions),
and replaces their entries in $TRAINER_CACHE/peak_flops.json. Run it on a quiet machine: each entry records
the load it was measured under, and one measured while the machine was busy is measured again by the next run
on a quieter machine anyway.
"""
import dataclasses

from trainer import cli

MEASUREMENTS = (("matmul", "none"), ("matmul", "bf16"), ("step speedup", "bf16"))


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    """trainer-calibrate takes no settings."""


def _main(config: CalibrateConfig, arguments) -> None:
    from trainer import runtime
    runtime.import_tensorflow()
    from trainer import flops
    for kind, precision in MEASUREMENTS:
        value, when, _ = flops.calibrated(kind, precision, fresh=True)
        shown = f"{value / 1e9:.1f} GFLOP/s" if kind == "matmul" else f"{value:.2f}x float32's"
        print(f"{flops.cache_key(kind, precision)}: {shown} (measured {when})")


def main():
    cli.run(CalibrateConfig, _main, __doc__)


if __name__ == "__main__":
    main()
