"""LiteRT side of the exports: run a ``.tflite`` model and read its flatbuffer (no TensorFlow needed).

* ``tf.lite.Interpreter`` is deprecated; :class:`TFLiteRunner` uses ``ai_edge_litert.interpreter.Interpreter`` and
  reads outputs by name through ``get_signature_runner()`` (the raw ``get_output_details()`` order is not the
  model's order).
* XNNPACK (applied by the default op resolver) was seen to give wrong int8 results, so models containing int8
  tensors run with ``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (reported as ``resolver``).
* :func:`tflite_op_names` / :func:`tflite_operator_sequence` parse the flatbuffer directly: the builtin-only check
  of :mod:`axial_kd_tf.export.convert` and the "same kernels as the baseline" check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as tfl_schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from axial_kd_tf.errors import UserError
from axial_kd_tf.quiet import native_quiet

#: Name of the single image input in every exported signature.
INPUT_NAME = "images"
#: Output key used when the model has a single output.
DEFAULT_OUTPUT_NAME = "logits"
#: Signature key of the exported SavedModel / TFLite models.
SIGNATURE_KEY = "serving_default"
#: Prefix of non-builtin (custom / Flex) ops in :func:`tflite_op_names`.
CUSTOM_OP_PREFIX = "CUSTOM:"


def check_images(images: Any, input_shape: Sequence[int] | None, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[0] < 1 or (input_shape is not None and tuple(arr.shape[1:]) != tuple(input_shape)):
        want = f"(N, {', '.join(map(str, input_shape))})" if input_shape is not None else "(N, H, W, C)"
        raise UserError(f"{what} must be an array of shape {want} with N >= 1, got shape {list(arr.shape)}")
    return arr.astype(np.float32, copy=False)


def _flatbuffer(model_bytes: bytes) -> Any:
    """The root ``Model`` table of a ``.tflite`` flatbuffer (one-line error when it is not one)."""
    buf = bytearray(model_bytes)
    if len(buf) < 8 or not tfl_schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise UserError("not a TFLite flatbuffer (missing 'TFL3' identifier)")
    return tfl_schema.Model.GetRootAs(buf, 0)


_BUILTIN_NAMES = {v: k for k, v in vars(tfl_schema.BuiltinOperator).items() if not k.startswith("_")}


def _builtin_name(code: int) -> str:
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def tflite_op_names(model_bytes: bytes) -> list[str]:
    """Sorted, de-duplicated operator names used by a ``.tflite`` flatbuffer.

    Builtin ops appear by their ``BuiltinOperator`` name (e.g. ``"CONV_2D"``); custom ops, Flex ops included,
    as ``"CUSTOM:<custom code>"`` (e.g. ``"CUSTOM:FlexFFT2D"``), so a model is builtins-only iff no name starts
    with :data:`CUSTOM_OP_PREFIX`. Parses the flatbuffer directly (no interpreter), so it also works for models
    the interpreter could not load.
    """
    fb_model = _flatbuffer(model_bytes)
    names: set[str] = set()
    for i in range(fb_model.OperatorCodesLength()):
        opcode = fb_model.OperatorCodes(i)
        # Codes >= 127 live in BuiltinCode(), older ones in DeprecatedBuiltinCode() (see tflite schema_util).
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        if code == tfl_schema.BuiltinOperator.CUSTOM:
            custom = opcode.CustomCode()
            names.add(CUSTOM_OP_PREFIX + (custom.decode("utf-8", "replace") if custom else ""))
        else:
            names.add(_builtin_name(code))
    return sorted(names)


def tflite_operator_sequence(model_bytes: bytes) -> list[str]:
    """Every operator of every subgraph, in execution order (``tflite_op_names`` is the de-duplicated set).

    Two networks with equal sequences run exactly the same kernels, so this is the "same op list" check between a
    distilled student and its baseline.
    """
    fb_model = _flatbuffer(model_bytes)
    sequence = []
    for g in range(fb_model.SubgraphsLength()):
        graph = fb_model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            opcode = fb_model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
            sequence.append(_builtin_name(code))
    return sequence


def _has_int8_tensors(model_bytes: bytes) -> bool:
    fb_model = tfl_schema.Model.GetRootAs(bytearray(model_bytes), 0)
    int8 = tfl_schema.TensorType.INT8
    for s in range(fb_model.SubgraphsLength()):
        graph = fb_model.Subgraphs(s)
        if any(graph.Tensors(t).Type() == int8 for t in range(graph.TensorsLength())):
            return True
    return False


def _quant_params(details: dict[str, Any]) -> tuple[float, int]:
    qp = details.get("quantization_parameters", {})
    scales, zero_points = qp.get("scales", ()), qp.get("zero_points", ())
    if len(scales) != 1 or len(zero_points) != 1:
        raise UserError(f"TFLite tensor {details.get('name')!r} is integer but not per-tensor quantised")
    return float(scales[0]), int(zero_points[0])


class TFLiteRunner:
    """One LiteRT interpreter + signature runner; quantises inputs and dequantises outputs."""

    def __init__(self, model_bytes_or_path: bytes | str | Path, int8_resolver: bool = True) -> None:
        if isinstance(model_bytes_or_path, (bytes, bytearray, memoryview)):
            model_bytes = bytes(model_bytes_or_path)
        else:
            path = Path(model_bytes_or_path)
            if not path.is_file():
                raise UserError(f"TFLite model file not found: {path}")
            model_bytes = path.read_bytes()
        self.size_bytes = len(model_bytes)
        # XNNPACK (a default delegate) produced wrong int8 results on this stack, so any model with int8 tensors
        # runs on the plain builtin kernels; float models keep the default resolver (XNNPACK), as on device.
        if int8_resolver and _has_int8_tensors(model_bytes):
            resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        else:
            resolver = OpResolverType.AUTO
        self.resolver = resolver.name
        self._interpreter = Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolver)
        with native_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interpreter.allocate_tensors()
        signatures = self._interpreter.get_signature_list()
        key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else (next(iter(signatures)) if signatures else None)
        if key is None or (key != SIGNATURE_KEY and len(signatures) != 1):
            raise UserError(f"TFLite model has no usable signature (found {sorted(signatures)})")
        self._runner = self._interpreter.get_signature_runner(key)
        inputs = self._runner.get_input_details()
        if len(inputs) != 1:
            raise UserError(f"TFLite model must have exactly one input, found {sorted(inputs)}")
        self.input_name, self._in = next(iter(inputs.items()))
        self._out = self._runner.get_output_details()
        self.output_names = list(self._out)
        self.input_shape = tuple(int(d) for d in self._in["shape"][1:])

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run one ``[1, H, W, C]`` float32 image; returns float32 outputs keyed by signature output name."""
        x = image
        in_dtype = np.dtype(self._in["dtype"])
        if np.issubdtype(in_dtype, np.integer):
            scale, zero_point = _quant_params(self._in)
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(in_dtype)
        else:
            x = x.astype(in_dtype, copy=False)
        raw = self._runner(**{self.input_name: x})
        result = {}
        for name, value in raw.items():
            if np.issubdtype(value.dtype, np.integer):
                scale, zero_point = _quant_params(self._out[name])
                value = (value.astype(np.float32) - zero_point) * scale
            result[name] = np.asarray(value, dtype=np.float32)
        return result

    def run_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images, self.input_shape, "images")
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for i in range(len(images)):  # the signature has a fixed batch of 1
            for name, value in self(images[i : i + 1]).items():
                chunks[name].append(value)
        return {name: np.concatenate(values, axis=0) for name, values in chunks.items()}


def run_tflite(
    model_bytes_or_path: bytes | str | Path,
    images: np.ndarray,
    int8_resolver: bool = True,
    output_name: str | None = None,
) -> np.ndarray:
    """Run a TFLite model image by image and return float32 outputs ``[N, H, W, K]``.

    Integer (int8) inputs/outputs are (de)quantised with the tensor's scale and zero point. Outputs are read by
    name through the signature runner. ``output_name`` picks an output of a multi-output model (default:
    ``"logits"`` or the only output). With ``int8_resolver`` (default) a model containing int8 tensors runs with
    ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (no XNNPACK); float models always use the default resolver.
    """
    runner = TFLiteRunner(model_bytes_or_path, int8_resolver=int8_resolver)
    if output_name is None:
        if DEFAULT_OUTPUT_NAME in runner.output_names:
            output_name = DEFAULT_OUTPUT_NAME
        elif len(runner.output_names) == 1:
            output_name = runner.output_names[0]
        else:
            raise UserError(f"TFLite model has several outputs; pass output_name, one of {runner.output_names}")
    if output_name not in runner.output_names:
        raise UserError(f"TFLite model has no output {output_name!r}; outputs are {runner.output_names}")
    return runner.run_all(images)[output_name]


