"""``python -m axial_kd_tf.experiments`` (the entry point only; see :mod:`axial_kd_tf.experiments.cli`)."""

import contextlib
import sys

from axial_kd_tf.experiments.cli import main

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
