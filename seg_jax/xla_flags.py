"""XLA flags the runner sets on CPU, in one place for `seg_jax.main` and the benchmarks.

XLA reads XLA_FLAGS once, when JAX starts, so callers set them before importing JAX; this module
imports no JAX for that reason.
"""

import os

# On XLA:CPU most convolutions otherwise run one at a time through YNNPACK on a single core;
# excluding them from YNNPACK fusion lets XLA's multi-threaded kernels run them (README: speed).
CPU_FAST_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def use_cpu_fast_conv() -> None:
    """Adds CPU_FAST_CONV_FLAG to XLA_FLAGS unless XLA_FLAGS already sets that option (a user's
    choice wins)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_FAST_CONV_FLAG}".strip()
