"""``python -m axial_kd_tf.export --run DIR [--variants ...] [--teacher]``: (re-)export a run (the entry point only)."""

import sys

from axial_kd_tf.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
