"""Export trained networks to SavedModel and builtin-only TFLite, verify them, and run them in LiteRT.

:mod:`~axial_kd_tf.export.saved_model` checks the network and writes the SavedModel (with the float32 copy of a
mixed-precision network); :mod:`~axial_kd_tf.export.convert` converts and verifies (TensorFlow);
:mod:`~axial_kd_tf.export.litert` runs a ``.tflite`` file and reads its flatbuffer (LiteRT only). ``python -m axial_kd_tf.export --run DIR`` re-exports a run.
"""

from axial_kd_tf.export.convert import VARIANTS, TFLiteConversionError, convert_tflite, export_network, verify_tflite
from axial_kd_tf.export.litert import CUSTOM_OP_PREFIX, run_tflite, tflite_op_names, tflite_operator_sequence
from axial_kd_tf.export.saved_model import export_saved_model, float32_copy

__all__ = [
    "VARIANTS",
    "TFLiteConversionError",
    "export_saved_model",
    "convert_tflite",
    "run_tflite",
    "verify_tflite",
    "export_network",
    "float32_copy",
    "tflite_op_names",
    "tflite_operator_sequence",
    "CUSTOM_OP_PREFIX",
]
