#!/usr/bin/env python
"""Train a segmentation network with Axial-Attention self-distillation.

    python train.py --config configs/quickstart.yaml [--set train.epochs=3] [--run-dir runs/x] [--resume]
"""

import sys

from axial_kd_tf.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
