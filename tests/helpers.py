"""Shared by the tests (not a test module; fixtures are in ``conftest.py``).

* :data:`ZOO_SPECS`: one row per zoo architecture, the single home of its SMP 0.6.0 parameter pins, the input sizes
  it takes and refuses, and its tiny variant (:data:`TINY_OPTIONS`, also ``benchmarks/teacher_gpu.py --small``);
* :func:`run_layer_test`: the checks every custom layer gets (after keras-hub's ``TestCase.run_layer_test``);
* NumPy references and weight randomisers for the layers, writers of the data sets' fixtures, README blocks,
  benchmark loading.

Imports no TensorFlow (``tests/test_backends.py`` imports this module in its ``KERAS_BACKEND=jax`` process, and
``benchmarks/teacher_gpu.py`` under every backend); TensorFlow-only helpers import it inside the function.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

import keras
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


# ------------------------------------------------------------------------------------------------------- the zoo
RESNET34_ENCODER = 21_284_672  # SMP / torchvision resnet34 without fc, trainable parameters
RESNET34_DEPTH3_ENCODER = 1_347_904  # stem + layer1 + layer2 (PSPNet's encoder_depth=3)
NUM_CLASSES = 5  # the SMP reference's classes=5


@dataclass(frozen=True)
class ZooSpec:
    """One architecture of the zoo.

    ``encoder``, ``decoder``, ``head``: SMP 0.6.0's trainable parameters with resnet34, ``classes=5``,
    ``in_channels=3`` (``shared/reference/smp-architectures.md``; PSPNet's encoder is the part it uses). ``sizes``:
    two valid ``(H, W)``, the first the size of the functional checks; ``invalid``: ``((H, W), message)`` the input
    size check must raise. ``tiny``: options of the tiny variant (resnet18, depth 3–4, narrow decoder: the same
    blocks, XLA compiles it in seconds), which runs at ``tiny_size``².
    """

    arch: str
    decoder: int
    head: int
    tiny: dict[str, Any]
    encoder: int = RESNET34_ENCODER
    sizes: tuple[tuple[int, int], ...] = ((64, 64), (64, 96))
    invalid: tuple[tuple[tuple[int, int], str], ...] = (((72, 72), "divisible by 32"),)
    tiny_size: int = 32

    @property
    def params(self) -> int:
        """SMP's total (the reference table's "total params" column)."""
        return self.encoder + self.decoder + self.head

    @property
    def size(self) -> tuple[int, int]:
        return self.sizes[0]


ZOO_SPECS: dict[str, ZooSpec] = {spec.arch: spec for spec in (
    ZooSpec("unet", 3_151_552, 725, dict(encoder_depth=3, decoder_channels=(16, 8, 8)),
            sizes=((64, 64), (65, 67)), invalid=()),  # SMP's Unet takes any size (resizes to each skip)
    ZooSpec("unetplusplus", 4_793_792, 725, dict(encoder_depth=3, decoder_channels=(16, 8, 8))),
    ZooSpec("manet", 10_498_816, 725, dict(encoder_depth=3, decoder_channels=(16, 8, 8), decoder_pab_channels=8),
            sizes=((64, 64), (96, 64)), invalid=(((48, 64), "divisible by 32"),)),
    ZooSpec("linknet", 487_232, 165, dict(encoder_depth=3)),
    ZooSpec("fpn", 1_870_592, 645,
            dict(encoder_depth=4, decoder_pyramid_channels=32, decoder_segmentation_channels=32)),
    ZooSpec("pspnet", 148_704, 23_045, dict(encoder_depth=3, psp_out_channels=32), encoder=RESNET34_DEPTH3_ENCODER,
            sizes=((64, 64), (72, 40)), invalid=(((60, 64), "divisible by 8"),)),
    # PAN's feature pyramid pools its deepest map three more times: at least 128 at the defaults (the 1/16 map), 64
    # for the tiny variant (depth 3: the 1/8 map).
    ZooSpec("pan", 190_855, 1_445, dict(encoder_depth=3, decoder_channels=8), sizes=((128, 128), (144, 176)),
            invalid=(((120, 128), "divisible by 16"), ((64, 128), "at least 128")), tiny_size=64),
    ZooSpec("deeplabv3", 4_722_176, 1_285, dict(encoder_depth=4, encoder_output_stride=8, decoder_channels=32),
            sizes=((64, 64), (96, 72)), invalid=(((68, 64), "divisible by 8"),)),
    ZooSpec("deeplabv3plus", 1_152_528, 1_285, dict(encoder_depth=4, encoder_output_stride=8, decoder_channels=32),
            invalid=(((72, 64), "divisible by 16"),)),
)}

#: The tiny variants' options by architecture (with ``encoder="resnet18"``).
TINY_OPTIONS: dict[str, dict[str, Any]] = {arch: dict(spec.tiny) for arch, spec in ZOO_SPECS.items()}
TINY_CLASSES = 3


def tiny_size(arch: str) -> int:
    """Input height and width of ``arch``'s tiny variant."""
    return ZOO_SPECS[arch].tiny_size


def build_tiny(arch: str, in_channels: int = 1) -> keras.Model:
    """``arch``'s tiny variant (resnet18, :data:`TINY_CLASSES` classes) on whichever Keras backend is running."""
    from axial_kd_tf.models import build_network

    return build_network(arch, encoder="resnet18", num_classes=TINY_CLASSES, in_channels=in_channels,
                         **TINY_OPTIONS[arch])


def build_zoo_network(arch: str, encoder: str = "resnet34", in_channels: int = 3, seed: int = 0,
                      **options: Any) -> keras.Model:
    """A zoo network at its defaults, :data:`NUM_CLASSES` classes, with seeded initial weights."""
    from axial_kd_tf.models import build_network

    keras.utils.set_random_seed(seed)
    return build_network(arch, encoder=encoder, num_classes=NUM_CLASSES, in_channels=in_channels, **options)


def count_params(model: keras.Model | keras.layers.Layer) -> int:
    """Trainable parameters (BN running statistics excluded, as the SMP reference counts them)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


# ------------------------------------------------------------------------------------------------ custom layers
def random_weights(model: keras.Model | keras.layers.Layer, seed: int) -> None:
    """Set every weight to random values (variances positive), so that a weight that is lost or mixed up on the way
    (a config, a save, another backend) changes the output."""
    rng = np.random.default_rng(seed)
    values = []
    for var in model.weights:
        shape = tuple(var.shape)
        if "variance" in var.path:
            values.append(rng.uniform(0.5, 2.0, shape).astype("float32"))
        else:
            values.append((0.4 * rng.standard_normal(shape)).astype("float32"))
    model.set_weights(values)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def run_layer_test(
    cls: type[keras.layers.Layer],
    init_kwargs: dict[str, Any],
    input_data: np.ndarray | Sequence[np.ndarray],
    expected_output_shape: tuple[int, ...],
    *,
    call_kwargs: Optional[dict[str, np.ndarray]] = None,
    expected_output: Optional[np.ndarray] = None,
    expected_num_trainable_weights: Optional[int] = None,
    expected_num_non_trainable_weights: Optional[int] = None,
    run_training_check: bool = True,
    atol: float = 1e-5,
) -> np.ndarray:
    """The checks every custom layer gets, after keras-hub's ``TestCase.run_layer_test``; returns the eager output.

    * config: every argument given in ``init_kwargs`` (plain values) is in ``get_config()`` unchanged; the config is
      JSON; ``from_config`` and Keras' generic (de)serialisation give the same config back;
    * symbolic call in a functional model (output shape; the weight counts once built), eager call (shape, the
      layer's compute dtype, finite values, ``expected_output``);
    * a layer rebuilt from its config computes the same as the original with the original's (random) weights;
    * ``.keras`` save/load of a model holding the layer, with random weights: the same class, weights and outputs;
    * with trainable weights (and ``run_training_check``), one ``fit`` step of that model gives a finite loss.

    ``input_data``: one array, or a list of arrays passed as the layer's one (list) argument; ``call_kwargs``: tensor
    keyword inputs (``Resize(...)(x, like=y)``).
    """
    call_kwargs = call_kwargs or {}
    # --- config
    layer = cls(**init_kwargs)
    config = layer.get_config()
    json.dumps(config)  # raises unless the config is JSON
    for key, value in init_kwargs.items():
        if key == "dtype" or isinstance(config.get(key), dict):  # serialised objects (policies, initialisers)
            continue
        assert key in config, f"get_config() lacks the argument {key!r}"
        assert _plain(config[key]) == _plain(value), f"get_config()[{key!r}] = {config[key]!r}, given {value!r}"
    assert cls.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert type(revived) is cls and revived.get_config() == config

    # --- symbolic call, in a functional model
    multi = isinstance(input_data, (list, tuple))
    arrays = list(input_data) if multi else [input_data]
    inputs = [keras.Input(a.shape[1:], batch_size=a.shape[0], dtype=str(a.dtype)) for a in arrays]
    kw_inputs = {k: keras.Input(a.shape[1:], batch_size=a.shape[0], dtype=str(a.dtype)) for k, a in call_kwargs.items()}
    layer = cls(**init_kwargs)
    symbolic = layer(inputs if multi else inputs[0], **kw_inputs)
    assert tuple(symbolic.shape) == tuple(expected_output_shape), f"symbolic output shape {symbolic.shape}"
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, [w.path for w in layer.trainable_weights]
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, \
            [w.path for w in layer.non_trainable_weights]
    model = keras.Model(inputs + list(kw_inputs.values()), symbolic)
    feed = arrays + list(call_kwargs.values())

    # --- eager call
    eager_layer = cls(**init_kwargs)
    output = eager_layer(input_data if multi else arrays[0], **call_kwargs)
    assert tuple(output.shape) == tuple(expected_output_shape), f"eager output shape {output.shape}"
    assert keras.backend.standardize_dtype(output.dtype) == eager_layer.compute_dtype
    output = keras.ops.convert_to_numpy(output)
    assert np.all(np.isfinite(output.astype("float32")))
    if expected_output is not None:
        np.testing.assert_allclose(output, expected_output, atol=atol, rtol=atol)

    # --- the config rebuilds the same function (an argument lost in get_config changes weights or outputs)
    random_weights(model, seed=0)
    want = keras.ops.convert_to_numpy(model(feed, training=False))
    clone = cls.from_config(layer.get_config())
    clone_out = clone(inputs if multi else inputs[0], **kw_inputs)
    clone_model = keras.Model(inputs + list(kw_inputs.values()), clone_out)
    clone_model.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone_model(feed, training=False)), want, atol=atol,
                               rtol=atol, err_msg="the layer rebuilt from its config computes something else")

    # --- .keras round trip of a model holding the layer
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer(layer.name)) is cls
    assert loaded.get_layer(layer.name).get_config() == layer.get_config()
    for w0, w1 in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w0), keras.ops.convert_to_numpy(w1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(feed, training=False)), want, atol=atol, rtol=atol)

    # --- one training step
    if run_training_check and layer.trainable_weights:
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=False)
        history = model.fit(feed, np.zeros(tuple(expected_output_shape), "float32"), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
    return output


# ----------------------------------------------------------------------------------- axial attention reference
BN_EPS = 1e-3  # Keras BatchNormalization default


def weight_key(variable: Any) -> str:
    """``qkv_kernel``, ``rel_q``, ``qkv_norm/gamma``, ... independent of the layer's (unique) name."""
    parts = variable.path.split("/")
    if len(parts) >= 2 and parts[-2].endswith("_norm"):
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def randomize_axial_weights(layer: keras.layers.Layer, seed: int) -> dict[str, np.ndarray]:
    """Set every weight of an ``AxialAttention`` (kernel, bias, relative tables, BN gamma/beta/moving stats) to a
    random array in a range that suits it; return the arrays (float64) keyed by :func:`weight_key`."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    values = []
    for var in layer.weights:
        key = weight_key(var)
        shape = tuple(var.shape)
        leaf = key.split("/")[-1]
        if leaf == "moving_variance":
            arr = rng.uniform(0.4, 2.5, shape)
        elif leaf == "moving_mean":
            arr = rng.normal(0.0, 0.5, shape)
        elif leaf == "gamma":
            arr = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        elif leaf == "beta":
            arr = rng.normal(0.0, 0.4, shape)
        elif leaf.startswith("rel_"):
            arr = rng.normal(0.0, 0.7, shape)
        elif leaf == "qkv_kernel":
            arr = rng.normal(0.0, 0.45, shape)
        elif leaf == "qkv_bias":
            arr = rng.normal(0.0, 0.4, shape)
        else:  # pragma: no cover - a new weight the tests do not know about
            raise AssertionError(f"unexpected weight {var.path}")
        assert key not in params, f"duplicate weight key {key}"
        params[key] = arr
        values.append(arr.astype(np.float32))
    layer.set_weights(values)
    for key in ("rel_q", "rel_k", "rel_v"):
        if key in params and len(params[key]) > 1:  # not symmetric in p − o, or a sign flip would go unnoticed
            assert not np.allclose(params[key], params[key][::-1], atol=1e-2)
    return {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}


def _bn(x: Any, params: dict, name: str, channels: Any) -> Any:
    """Inference-mode BatchNorm of ``x`` whose entries are the channels ``channels`` of norm ``name``."""
    g = params[f"{name}/gamma"][channels]
    b = params[f"{name}/beta"][channels]
    m = params[f"{name}/moving_mean"][channels]
    v = params[f"{name}/moving_variance"][channels]
    return (x - m) / np.sqrt(v + BN_EPS) * g + b


def reference_axial(x: np.ndarray, params: dict, *, axis: str, num_heads: int, key_dim: int, value_dim: int,
                    max_span: int, pos: bool, norm: bool, mutation: Optional[str] = None) -> np.ndarray:
    """Loop implementation of one Axial-DeepLab pass (Eq. 4 + BN; see tests/test_axial_attention.py).

    ``mutation`` injects a known bug (sensitivity checks).
    """
    x = np.asarray(x, np.float64)
    seqs = x.transpose(0, 2, 1, 3) if axis == "height" else x  # [B, other, L, C]
    n_b, n_other, length, _ = seqs.shape
    h, dk, dv = num_heads, key_dim, value_dim
    span = max_span - 2 if mutation == "clip_off_by_one" else max_span - 1

    def row(o: int, p: int) -> int:
        d = (o - p) if mutation == "flip_rel" else (p - o)
        return int(min(max(d, -span), span)) + max_span - 1

    def sim_channel(term: int, head: int) -> int:
        return head * 3 + term if mutation == "head_major_sim" else term * h + head

    out = np.zeros((n_b, n_other, length, h * dv))
    for b in range(n_b):
        for j in range(n_other):
            qkv = seqs[b, j] @ params["qkv_kernel"]  # [L, h(2dk+dv)]
            if norm:
                qkv = _bn(qkv, params, "qkv_norm", slice(None))
            else:
                qkv = qkv + params["qkv_bias"]
            q = qkv[:, : h * dk].reshape(length, h, dk)
            k = qkv[:, h * dk : 2 * h * dk].reshape(length, h, dk)
            v = qkv[:, 2 * h * dk :].reshape(length, h, dv)
            for head in range(h):
                logits = np.zeros((length, length))
                for o in range(length):
                    for p in range(length):
                        terms = [float(np.dot(q[o, head], k[p, head]))]
                        if pos:
                            r = row(o, p)
                            terms.append(float(np.dot(q[o, head], params["rel_q"][r])))
                            terms.append(float(np.dot(k[p, head], params["rel_k"][r])))
                        if norm:
                            terms = [_bn(t, params, "similarity_norm", sim_channel(i, head))
                                     for i, t in enumerate(terms)]
                            logits[o, p] = sum(terms)
                        else:
                            logits[o, p] = sum(terms) / math.sqrt(dk)
                for o in range(length):
                    w = np.exp(logits[o] - logits[o].max())
                    w /= w.sum()
                    y_v = sum(w[p] * v[p, head] for p in range(length))
                    ch_v = np.arange(head * dv, (head + 1) * dv)
                    if pos:
                        y_r = sum(w[p] * params["rel_v"][row(o, p)] for p in range(length))
                        ch_r = h * dv + ch_v
                        if mutation == "swap_out_terms":
                            ch_v, ch_r = ch_r, ch_v
                        if norm:
                            y = _bn(y_v, params, "output_norm", ch_v) + _bn(y_r, params, "output_norm", ch_r)
                        else:
                            y = y_v + y_r
                    else:
                        y = _bn(y_v, params, "output_norm", ch_v) if norm else y_v
                    out[b, j, o, head * dv : (head + 1) * dv] = y
    return out.transpose(0, 2, 1, 3) if axis == "height" else out


# ------------------------------------------------------------------------------------------ data-set fixtures
SSTEM_FIXTURE_SIZE = 32
COVID_SHAPE = (32, 32, 10)  # NIfTI [X, Y, slices]


def write_sstem_fixture(root: Path, size: int = SSTEM_FIXTURE_SIZE) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """20 ssTEM sections in the upstream format (``raw/NN.tif`` + ``labels/labels000000NN.png``) whose raw pixels
    encode the section index (pixel [0, 0]), with random labels over every source value."""
    import cv2

    from axial_kd_tf.data import sstem

    raw_values = np.array(sorted(sstem.VALUE_MAP))
    rng = np.random.default_rng(0)
    (root / "raw").mkdir(parents=True)
    (root / "labels").mkdir()
    sections = {}
    for i in range(sstem.NUM_IMAGES):
        raw = rng.integers(0, 256, (size, size), dtype=np.uint8)
        raw[0, 0] = i  # marker: which section a loaded array came from
        labels = raw_values[rng.integers(0, len(raw_values), (size, size))].astype(np.uint8)
        assert cv2.imwrite(str(root / sstem.raw_name(i)), raw)
        assert cv2.imwrite(str(root / sstem.label_name(i)), labels)
        sections[i] = (raw, labels)
    return sections


def save_nifti(path: Path, volume: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


def covid_volumes() -> tuple[np.ndarray, np.ndarray]:
    """HU-like image (slice i has a base value of 10·i, an L-shaped marker at the origin) and a float mask."""
    x, y, z = COVID_SHAPE
    image = np.full((x, y, z), -1000.0, np.float32)
    image += 10.0 * np.arange(z, dtype=np.float32)[None, None, :]
    image[0:3, 0, :] = 500.0   # 3 voxels along NIfTI axis 0 ...
    image[0, 0:6, :] = 500.0   # ... and 6 along axis 1: asymmetric, so a wrong transform is visible
    mask = np.zeros((x, y, z), np.float64)
    for i in range(z):
        mask[8:12, 20:28, i] = i % 4  # a 4×8 block (axis 0 × axis 1) of class i mod 4
    return image, mask


def write_covid_fixture(root: Path, image: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None) -> Path:
    """The MedSeg COVID-19 files (``.nii.gz``, masks stored as floats) in ``root``: :func:`covid_volumes` unless
    given."""
    from axial_kd_tf.data import covid

    default_image, default_mask = covid_volumes()
    root.mkdir(parents=True, exist_ok=True)
    save_nifti(root / covid.IMAGE_FILE, default_image if image is None else image)
    save_nifti(root / covid.MASK_FILE, default_mask if mask is None else mask)
    return root


# ------------------------------------------------------------------------------------- README and benchmarks
def python_block(marker: str) -> str:
    """The one ```python block of README.md that contains ``marker``."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks containing {marker!r}, expected 1"
    return found[0]


def substitute(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key replaced by its value; a key that is not there fails (the README changed)."""
    for old, new in replacements.items():
        assert old in code, f"the README block no longer contains {old!r}: update the test"
        code = code.replace(old, new)
    return code


def load_benchmark(name: str) -> ModuleType:
    """A fresh module ``benchmarks_<name>_under_test`` from ``benchmarks/<name>.py``, loaded from its file as
    ``python benchmarks/<name>.py`` runs it (the scripts put the repository root on ``sys.path`` themselves)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Crash simulator: raise KeyboardInterrupt after epoch ``n`` (1-based) ends."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if epoch + 1 == self.n:
            raise KeyboardInterrupt(f"simulated interruption after epoch {self.n}")
