"""Custom Keras 3 layers: the axial-attention pass and the teacher head."""

from axial_kd_tf.layers.axial_attention import AxialAttention
from axial_kd_tf.layers.teacher_head import AxialTeacherHead

__all__ = ["AxialAttention", "AxialTeacherHead"]
