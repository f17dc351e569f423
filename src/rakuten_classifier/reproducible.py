"""Settings under which the pipeline's outputs are the same bytes on every machine.

Floating-point sums give other last bits in another order, and the fast kernels choose their
order by CPU: oneDNN (TensorFlow's default convolutions and matrix products) picks its code by
instruction set, XLA compiles for the CPU it runs on, and TensorFlow's own thread pools split
work by their size. So every pipeline stage runs with:

- oneDNN off: TensorFlow's Eigen kernels are compiled into the wheel, the same code on every
  x86-64 CPU (measured here: 1.6x slower for the backbone pass over the sample's photos);
- TensorFlow's thread pools at a fixed size, whatever the number of cores: the same split of
  the work, and so the same order of the sums, everywhere;
- TensorFlow's deterministic ops (no run-to-run variation from parallel reductions).

XLA is off in `training.compile_classifier`. The serving paths (batch command, API) do not use
these settings: their answers agree with the pipeline's to about 1e-6, not bit for bit.
"""

from __future__ import annotations

import os

# Threads of TensorFlow's pools in the pipeline: results depend on this number, so it is fixed.
PIPELINE_THREADS = 2

ENVIRONMENT = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_NUM_INTRAOP_THREADS": str(PIPELINE_THREADS),
    "TF_NUM_INTEROP_THREADS": str(PIPELINE_THREADS),
    "TF_DETERMINISTIC_OPS": "1",
}


def pin_numerics() -> None:
    """Apply ENVIRONMENT to this process. It must run before TensorFlow is imported: the
    settings are read once, when TensorFlow starts."""
    os.environ.update(ENVIRONMENT)
