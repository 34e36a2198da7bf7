#!/usr/bin/env python
"""Evaluate a run or a saved model: per-class IoU / mIoU table, metrics.json, overlay PNGs.

    python evaluate.py --run runs/quickstart-... [--split test]
    python evaluate.py --model runs/.../export/student.tflite
"""

import sys

from axial_kd_tf.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
