"""Encoders (backbones) of the model zoo: feature maps at strides 1, 2, 4, 8, 16 and 32 on a shared input tensor.

The interface follows segmentation_models_pytorch's encoders (SMP 0.6, ``encoders/_base.py``): an encoder gives
``depth + 1`` feature maps, ``maps[i]`` at stride ``2**i`` (``maps[0]`` is the input), and ``output_stride`` 16 or 8
replaces the stride of the last one or two stages by dilation (``make_dilated``), for the DeepLab family and PAN.
See ``docs/zoo_contract.md``.

Two kinds of encoder:

* **Native** ``resnet18`` / ``resnet34``: torchvision's ResNet with basic blocks (He et al., "Deep Residual Learning
  for Image Recognition", CVPR 2016; SMP's ``encoders/resnet.py`` wraps exactly this), written with PyTorch-style
  symmetric padding and PyTorch BatchNorm defaults (:mod:`axial_kd_tf.models.blocks`). Layer names mirror
  torchvision's state-dict keys (``layer3.2.conv1`` → ``encoder_layer3_block2_conv1``), so ``weights="imagenet"``
  loads torchvision's own ImageNet checkpoints, as SMP does, and ``weights="<file>.pth"`` a local one
  (:mod:`axial_kd_tf.models.torchvision_weights`; torch is not needed).
* **keras.applications** families (``resnet50/101/152``, ``efficientnetb0``–``b7``, ``mobilenetv2``,
  ``convnext_tiny/small/base``, ``vgg16``), built with ``include_top=False`` and replayed layer by layer onto the
  caller's tensor, so the network stays one flat functional graph. Every layer is renamed ``encoder_<keras name>``
  (the decoders' layers start with ``decoder``). Taps: the stride ``2**i`` map is the last map at that resolution
  before the next downsampling (table in :data:`APP_TAPS`).

Dilation (:func:`dilatable_encoders`) follows SMP's ``make_dilated``: OS16 gives the stride-32 stage stride 1 and
dilation 2, OS8 also gives the stride-16 stage dilation 2 (and the last 4); every conv of a dilated stage is dilated,
the formerly strided one included, and parameter counts do not change. Keras ResNets stride with 1×1 convs, so their
dilated versions are exact "à trous" versions of the undilated network; MobileNetV2/EfficientNet's strided depthwise
convs lose their asymmetric padding for a symmetric ``rate·(k−1)/2``. VGG (max-pool downsampling, as in SMP) and
ConvNeXt (2×2 stride-2 patch convs) are not dilatable. BatchNorm layers of keras.applications encoders get PyTorch's
momentum (0.1, Keras 0.9) like the native ones; their epsilons stay as trained.

Input range. Preprocessing baked into keras.applications models is *removed* (EfficientNet's ``Rescaling`` /
``Normalization`` layers; ConvNeXt is built with ``include_preprocessing=False``), so every encoder consumes the
network input as it comes, like SMP's encoders. With ``weights="imagenet"`` feed what the weights were trained on
(:data:`IMAGENET_INPUT`): torchvision-style ``(x/255 − mean)/std`` RGB for resnet18/34, EfficientNet and ConvNeXt,
Caffe-style BGR minus the ImageNet mean (0–255) for the Keras ResNets and VGG16, ``x/127.5 − 1`` for MobileNetV2.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import keras
import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import torchvision_weights as tv
from axial_kd_tf.models.blocks import BN_MOMENTUM, batch_norm, conv2d
from axial_kd_tf.models.torchvision_weights import NATIVE_RESNETS, adapt_first_conv_kernel

PREFIX = "encoder_"  # every encoder layer's name starts with it


@dataclass(frozen=True)
class Features:
    """Encoder outputs (see ``docs/zoo_contract.md``).

    ``maps[i]`` has stride ``2**i`` (``maps[0]`` is the input; ``None`` where the encoder has no such map, e.g.
    ConvNeXt at stride 2); ``channels[i]`` is its channel count (0 for ``None``); ``output_stride`` is the real
    stride of ``maps[-1]`` after dilation: ``min(output_stride, 2**depth)``.
    """

    maps: list
    channels: list
    output_stride: int


# --------------------------------------------------------------------------------------------------------------
# Native torchvision ResNets (basic blocks)
# --------------------------------------------------------------------------------------------------------------



Layers = dict[str, keras.layers.Layer]  # name → layer, the conv/BN layers of a native resnet (to load weights into)


def _keep(t: Any, layers: Layers) -> Any:
    """Record the layer that produced the KerasTensor ``t`` (``blocks.conv2d`` returns only its output)."""
    layer = t._keras_history.operation
    layers[layer.name] = layer
    return t


def _basic_block(x: Any, filters: int, stride: int, dilation: int, downsample: bool, name: str,
                 layers: Layers) -> Any:
    """torchvision ``BasicBlock``: conv3×3(stride)-BN-ReLU-conv3×3-BN, + shortcut, ReLU after the add."""
    y = _keep(conv2d(x, filters, 3, f"{name}_conv1", strides=stride, dilation_rate=dilation, use_bias=False), layers)
    y = _keep(batch_norm(f"{name}_bn1")(y), layers)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _keep(conv2d(y, filters, 3, f"{name}_conv2", dilation_rate=dilation, use_bias=False), layers)
    y = _keep(batch_norm(f"{name}_bn2")(y), layers)
    if downsample:  # torchvision: 1×1 conv (no bias) + BN when the stride or the width changes
        x = _keep(conv2d(x, filters, 1, f"{name}_downsample_conv", strides=stride, use_bias=False), layers)
        x = _keep(batch_norm(f"{name}_downsample_bn")(x), layers)
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_relu2")(y)


def _native_resnet(name: str, inputs: Any, depth: int, rates: dict[int, int], layers: Layers) -> list:
    """Maps 1..depth of torchvision's resnet18/34; ``rates`` maps a stage (4 or 5) to its dilation; the conv and BN
    layers are recorded in ``layers`` by name.

    Dilation follows SMP's ``make_dilated`` (``replace_strides_with_dilation``), which differs from torchvision's
    ``replace_stride_with_dilation``: *every* conv of a dilated stage gets stride 1 and the stage's dilation,
    including the first block's conv1 (torchvision keeps the previous dilation there) and the 1×1 shortcut (where
    dilation is a no-op). Parameter counts do not change.
    """
    p = PREFIX
    x = _keep(conv2d(inputs, 64, 7, f"{p}conv1", strides=2, padding=3, use_bias=False), layers)
    x = _keep(batch_norm(f"{p}bn1")(x), layers)
    x = keras.layers.ReLU(name=f"{p}relu")(x)
    maps = [x]
    if depth >= 2:
        # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf; its input is post-ReLU (>= 0) and every 3×3 window
        # holds at least one real pixel, so zero padding gives the same result.
        x = keras.layers.ZeroPadding2D(1, name=f"{p}maxpool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name=f"{p}maxpool")(x)
    in_ch = 64
    for layer, (blocks_n, filters) in enumerate(zip(NATIVE_RESNETS[name], (64, 128, 256, 512)), start=1):
        stage = layer + 1  # layer1 → maps[2], ..., layer4 → maps[5]
        if stage > depth:
            break
        stride = 1 if layer == 1 else 2
        rate = rates.get(stage, 1)
        for b in range(blocks_n):
            s = stride if b == 0 else 1
            downsample = s != 1 or in_ch != filters  # decided on the undilated layout, as torchvision builds it
            x = _basic_block(x, filters, 1 if rate > 1 else s, rate, downsample, f"{p}layer{layer}_block{b}",
                             layers)
            in_ch = filters
        maps.append(x)
    return maps


# --------------------------------------------------------------------------------------------------------------
# keras.applications families
# --------------------------------------------------------------------------------------------------------------

# Taps for strides 2, 4, 8, 16, 32 in the Keras model's own layer names: "name" = that layer's output,
# "<name" = that layer's input, "@output" = the model's output, None = no map at that stride.
_RESNET_TAPS = {
    "resnet50": ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
    "resnet152": ("conv1_relu", "conv2_block3_out", "conv3_block8_out", "conv4_block36_out", "conv5_block3_out"),
}
_EFFNET_TAPS = ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                "block6a_expand_activation", "top_activation")
_MOBILENETV2_TAPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
                     "out_relu")
_VGG16_TAPS = ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool")


def _convnext_taps(model_name: str) -> tuple:
    # Stage outputs are unnamed Add ops: take the input of the next downsampling block; the stride-32 map is the
    # model's output (Keras' notop ConvNeXt ends with a LayerNormalization after the last stage).
    return (None, *(f"<{model_name}_downsampling_block_{i}" for i in range(3)), "@output")


RateMap = dict[int, int]  # stage (4 or 5) → dilation rate


def _dilate_keras_resnet(name: str, cfg: dict, rates: RateMap) -> None:
    """Keras ResNet v1 puts the stride on the first block's 1×1 convs (``_0_conv`` shortcut, ``_1_conv``)."""
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_conv", name)
    if not m or int(m[1]) not in rates:
        return
    if m[2] == "1" and m[3] in ("0", "1"):
        cfg["strides"] = (1, 1)
    if m[3] == "2":  # the 3×3 conv ("same" padding, so dilation keeps the size)
        cfg["dilation_rate"] = (rates[int(m[1])],) * 2


def _dilate_mobilenetv2(name: str, cfg: dict, rates: RateMap) -> None:
    """MobileNetV2: stage 4 = blocks 6–12 (block_6 downsamples), stage 5 = blocks 13–16 (block_13 downsamples)."""
    m = re.fullmatch(r"block_(\d+)_(pad|depthwise)", name)
    if not m:
        return
    n = int(m[1])
    stage = 5 if n >= 13 else 4 if n >= 6 else 0
    if stage not in rates:
        return
    r = rates[stage]
    if m[2] == "pad":  # asymmetric "correct_pad" before the stride-2 depthwise → symmetric dilation·(k−1)/2
        cfg["padding"] = ((r, r), (r, r))
    else:
        cfg["strides"] = (1, 1)
        cfg["dilation_rate"] = (r, r)


_EFFNET_STAGE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 5, 7: 5}  # block group → output stride exponent
_EFFNET_KERNEL = {1: 3, 2: 3, 3: 5, 4: 3, 5: 5, 6: 5, 7: 3}  # depthwise kernel size per block group


def _dilate_efficientnet(name: str, cfg: dict, rates: RateMap) -> None:
    """EfficientNet: stage 4 = block groups 4–5 (block4a downsamples), stage 5 = groups 6–7 (block6a)."""
    m = re.fullmatch(r"block(\d)([a-z])_dwconv(_pad)?", name)
    if not m or _EFFNET_STAGE[int(m[1])] not in rates:
        return
    r = rates[_EFFNET_STAGE[int(m[1])]]
    if m[3]:
        pad = r * (_EFFNET_KERNEL[int(m[1])] // 2)
        cfg["padding"] = ((pad, pad), (pad, pad))
    else:
        cfg["strides"] = (1, 1)
        cfg["dilation_rate"] = (r, r)


@dataclass(frozen=True)
class _AppSpec:
    builder: str  # keras.applications attribute
    taps: tuple  # strides 2..32, see above
    dilate: Optional[Callable[[str, dict, RateMap], None]] = None
    kwargs: dict = field(default_factory=dict)


_APPS: dict[str, _AppSpec] = {
    **{n: _AppSpec(f"ResNet{n[6:]}", t, _dilate_keras_resnet) for n, t in _RESNET_TAPS.items()},
    **{f"efficientnetb{i}": _AppSpec(f"EfficientNetB{i}", _EFFNET_TAPS, _dilate_efficientnet) for i in range(8)},
    "mobilenetv2": _AppSpec("MobileNetV2", _MOBILENETV2_TAPS, _dilate_mobilenetv2),
    **{f"convnext_{s}": _AppSpec(f"ConvNeXt{s.title()}", _convnext_taps(f"convnext_{s}"), None,
                                 {"include_preprocessing": False}) for s in ("tiny", "small", "base")},
    "vgg16": _AppSpec("VGG16", _VGG16_TAPS),
}

#: keras.applications tap layers per encoder (strides 2, 4, 8, 16, 32), in Keras' own names.
APP_TAPS: dict[str, tuple] = {name: spec.taps for name, spec in _APPS.items()}

#: Input the ImageNet weights expect (preprocessing is not part of the encoders).
IMAGENET_INPUT: dict[str, str] = {
    **{n: "torch: RGB (x/255 - mean)/std with the ImageNet mean/std (torchvision's ResNet weights)"
       for n in NATIVE_RESNETS},
    **{n: "caffe: BGR, 0-255, minus the ImageNet mean (keras.applications.resnet.preprocess_input)"
       for n in _RESNET_TAPS},
    "vgg16": "caffe: BGR, 0-255, minus the ImageNet mean (keras.applications.vgg16.preprocess_input)",
    "mobilenetv2": "RGB scaled to [-1, 1]: x/127.5 - 1",
    **{n: "torch: RGB (x/255 - mean)/std with the ImageNet mean/std" for n in _APPS
       if n.startswith(("efficientnet", "convnext"))},
}

_NO_DILATION_REASON = {
    "vgg16": "VGG downsamples with max pooling (SMP does not dilate VGG either)",
    **{f"convnext_{s}": "ConvNeXt downsamples with 2×2 stride-2 convs that dilation cannot replace"
       for s in ("tiny", "small", "base")},
}


def _is_auto_name(layer: keras.layers.Layer) -> bool:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()
    return re.fullmatch(rf"{snake}(_\d+)?", layer.name) is not None


def _app_encoder(name: str, inputs: Any, weights: Optional[str], depth: int, rates: RateMap) -> list:
    """Build the keras.applications model, then replay the layers up to the deepest tap onto ``inputs``.

    Replaying (rather than ``input_tensor=inputs``) lets us rename layers, drop baked-in preprocessing, set the
    strides/dilations of dilated stages, and build the first conv for any channel count while the reference model
    keeps 3 channels (so ImageNet weights load into it unchanged). ``keras.models.clone_model`` cannot be used: it
    re-creates Input tensors when the given tensors are not ``keras.Input`` s (the decoders pass an input-size
    check's output), which disconnects the graph.
    """
    spec = _APPS[name]
    builder = getattr(keras.applications, spec.builder)
    try:
        # Without ImageNet weights the reference model only lends its graph and layer configs: skip initialising
        # its variables (about half of the build time).
        with _uninitialized_variables() if weights is None else contextlib.nullcontext(), warnings.catch_warnings():
            # MobileNetV2 warns that size-agnostic inputs load its 224×224 weights: that is what we want.
            warnings.filterwarnings("ignore", message=".*input_shape.* is undefined or non-square")
            ref = builder(include_top=False, weights=weights, input_shape=(None, None, 3), **spec.kwargs)
    except Exception as exc:  # noqa: BLE001 — a failed weights download surfaces as many exception types
        if weights is None:
            raise
        raise UserError(f"could not load the Keras ImageNet weights of encoder '{name}' "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); they download "
                        f"into ~/.keras/models on first use, so run once with network access or set "
                        f"encoder_weights: null") from None

    def tensor(tap: str) -> Any:
        if tap == "@output":
            return ref.outputs[0]
        if tap.startswith("<"):
            return ref.get_layer(tap[1:]).input
        return ref.get_layer(tap).output

    taps = spec.taps[:depth]
    wanted = [tensor(t) for t in taps if t is not None]
    if not wanted:  # ConvNeXt at depth 1: it has no stride-2 map
        return [None] * len(taps)
    sub = keras.Model(ref.inputs, wanted)  # only the layers these taps need are replayed

    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    auto_names: dict[str, int] = {}

    def replay(op: Any) -> Any:
        if not isinstance(op, keras.layers.Layer):
            return op  # stateless keras.ops nodes (ConvNeXt's residual Add) are reused as they are
        if isinstance(op, (keras.layers.Rescaling, keras.layers.Normalization)):
            return lambda x: x  # baked-in ImageNet preprocessing is dropped (see the module docstring)
        cfg = op.get_config()
        if isinstance(op, keras.Sequential):
            # ConvNeXt's stem/downsampling blocks: drop the recorded 3-channel input so the copy builds for the
            # real channel count (otherwise a 1-channel input silently broadcasts to 3).
            cfg.pop("build_input_shape", None)
            cfg["layers"] = [{k: v for k, v in c.items() if k != "build_config"}
                             for c in cfg["layers"] if c.get("class_name") != "InputLayer"]
        if _is_auto_name(op):  # e.g. ConvNeXt's final LayerNormalization: give it a name that does not drift
            base = name + "_" + re.sub(r"_\d+$", "", op.name)
            k = auto_names[base] = auto_names.get(base, -1) + 1
            cfg["name"] = base if k == 0 else f"{base}_{k}"
        if isinstance(op, keras.layers.BatchNormalization):
            # PyTorch's running-stat momentum, as every SMP encoder trains with (Keras' 0.99 keeps the moving
            # variance near its start for hundreds of steps); epsilon stays, the weights were trained with it.
            cfg["momentum"] = BN_MOMENTUM
        if spec.dilate is not None and rates:
            spec.dilate(op.name, cfg, rates)
        cfg["name"] = PREFIX + cfg["name"]
        new = type(op).from_config(cfg)
        if op.weights:
            pairs.append((op, new))
        return new

    # Functional._run_through_graph is what clone_model and Functional.call use to replay a graph.
    outputs = sub._run_through_graph(inputs, operation_fn=replay)
    if weights == "imagenet":
        _copy_weights(pairs, name)
    it = iter(outputs)
    return [None if t is None else next(it) for t in taps]


@contextlib.contextmanager
def _uninitialized_variables() -> Any:
    """Create variables without initialising them (Keras defers initialisation inside a ``StatelessScope``).

    The deferred variables are dropped from Keras' pending list afterwards, so they are never initialised (the
    model built here is thrown away). Falls back to a plain build if Keras' internals differ.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.backend.common.stateless_scope import in_stateless_scope
    except ImportError:  # pragma: no cover - other Keras layouts
        yield
        return
    key = "uninitialized_variables"
    if in_stateless_scope():  # pragma: no cover - the caller's own scope decides
        yield
        return
    pending = list(global_state.get_global_attribute(key) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(key, pending)


def _copy_weights(pairs: list, name: str) -> None:
    adapted = 0
    for old, new in pairs:
        values = []
        for src, dst in zip(old.get_weights(), new.weights):
            if tuple(src.shape) != tuple(dst.shape):
                if src.ndim != 4 or src.shape[:2] + src.shape[3:] != tuple(dst.shape[:2]) + tuple(dst.shape[3:]):
                    raise RuntimeError(f"{name}: cannot map ImageNet weight {src.shape} of {old.name} to {dst.shape}")
                src = adapt_first_conv_kernel(src, int(dst.shape[2]))
                adapted += 1
            values.append(src)
        new.set_weights(values)
    if adapted > 1:
        raise RuntimeError(f"{name}: {adapted} kernels needed input-channel adaptation; only the first conv should")


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------

IMAGENET_ENCODERS: tuple[str, ...] = (*NATIVE_RESNETS, *_APPS)  # torchvision's weights for the native ones, else Keras'


def _is_path(weights: Any) -> bool:
    """``encoder_weights`` names a file rather than a misspelt keyword: a path separator, ``~``, ``.pth``/``.pt``."""
    text = str(weights)
    return ("/" in text or os.sep in text or text.startswith("~") or text.endswith((".pth", ".pt"))
            or os.path.isfile(text))


def _natural(names: Any) -> list[str]:
    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def available_encoders() -> list[str]:
    """Every encoder name :func:`build_encoder` accepts."""
    return _natural([*NATIVE_RESNETS, *_APPS])


def dilatable_encoders() -> list[str]:
    """Encoders that support ``output_stride`` 16 and 8."""
    return _natural([*NATIVE_RESNETS, *(n for n, s in _APPS.items() if s.dilate is not None)])


def build_encoder(name: str, inputs: Any, weights: Optional[str] = None, depth: int = 5,
                  output_stride: int = 32) -> Features:
    """Build encoder ``name`` on the KerasTensor ``inputs`` (``[B, H, W, C]``, any C; H, W may be ``None``).

    Args:
        name: one of :func:`available_encoders`.
        inputs: the tensor the encoder starts from (the network's input or, e.g., an input-size check's output).
        weights: ``None``, ``"imagenet"`` (torchvision's checkpoints for ``resnet18``/``resnet34``, fetched into
            the cache on first use; Keras' weights for the keras.applications encoders) or, for ``resnet18``/
            ``resnet34``, the path of a torchvision-layout ``.pth`` state dict. The first conv is adapted to
            ``C != 3`` as SMP does (:func:`adapt_first_conv_kernel`).
        depth: number of stages, 1–5; only those are built (``len(maps) == depth + 1``).
        output_stride: 32, or 16 / 8 to replace the stride of the last one / two stages by dilation 2 / (2, 4)
            (SMP ``make_dilated``); see :func:`dilatable_encoders`.

    Raises:
        UserError: unknown encoder, weights, depth or output stride; a checkpoint file for a keras.applications
            encoder; a checkpoint that is missing, damaged or another network's; weights that cannot be downloaded;
            dilation for an encoder that does not support it.
    """
    key = str(name).strip().lower()
    names = available_encoders()
    if key not in names:
        match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        raise UserError(f"unknown encoder '{name}'{hint} (available: {', '.join(names)})")
    if isinstance(weights, str) and weights.strip().lower() in ("", "none", "null"):
        weights = None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        weights = "imagenet"
    if weights not in (None, "imagenet"):
        if not _is_path(weights):
            raise UserError(f"encoder_weights '{weights}' is not supported for encoder '{key}'; use null (random "
                            f"init), 'imagenet' or the path of a torchvision .pth checkpoint "
                            f"({', '.join(NATIVE_RESNETS)} only)")
        if key not in NATIVE_RESNETS:
            raise UserError(f"encoder_weights '{weights}' is a checkpoint file, which is read for the "
                            f"torchvision-layout encoders only ({', '.join(NATIVE_RESNETS)}); for '{key}' use "
                            f"imagenet (Keras' weights) or null")
    if not isinstance(depth, (int, np.integer)) or not 1 <= depth <= 5:
        raise UserError(f"encoder_depth must be an integer from 1 to 5, got {depth!r}")
    if output_stride not in (8, 16, 32):
        raise UserError(f"encoder output_stride must be 8, 16 or 32, got {output_stride!r}")
    if output_stride != 32 and key not in dilatable_encoders():
        raise UserError(f"encoder '{key}' does not support output_stride {output_stride} "
                        f"({_NO_DILATION_REASON.get(key, 'no dilated mode')}); encoders that do: "
                        f"{', '.join(dilatable_encoders())}")
    in_channels = inputs.shape[-1]
    if in_channels is None:
        raise ValueError("build_encoder needs inputs with a known channel count")
    depth = int(depth)
    # SMP make_dilated: OS16 dilates stage 5 by 2; OS8 dilates stages 4 and 5 by 2 and 4.
    rates = {32: {}, 16: {5: 2}, 8: {4: 2, 5: 4}}[output_stride]
    rates = {s: r for s, r in rates.items() if s <= depth}

    if key in NATIVE_RESNETS:
        state, path = None, None
        if weights is not None:  # fetch, read and check the checkpoint before building: a bad file fails fast
            from axial_kd_tf.models.torch_checkpoint import read_torch_state_dict

            path = tv.checkpoint_path(key, weights)
            state = read_torch_state_dict(path)
            tv.check_torchvision_resnet(state, key, source=f"'{path}'")
        layers: Layers = {}
        maps = _native_resnet(key, inputs, depth, rates, layers)
        if state is not None:
            tv.load_torchvision_resnet(layers, state, key, source=f"'{path}'")
    else:
        maps = _app_encoder(key, inputs, weights, depth, rates)
    maps = [inputs, *maps]
    channels = [0 if m is None else int(m.shape[-1]) for m in maps]
    return Features(maps=maps, channels=channels, output_stride=min(output_stride, 2 ** depth))
