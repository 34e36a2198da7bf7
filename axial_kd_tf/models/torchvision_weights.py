"""torchvision's ImageNet weights for the native ``resnet18`` / ``resnet34`` encoders: where from, how they load.

segmentation_models_pytorch (the paper's library) defaults to ``encoder_weights="imagenet"``, which for its ResNets are
torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` / ``ResNet34_Weights.IMAGENET1K_V1`` checkpoints
(``torchvision/models/resnet.py``). The native encoders mirror torchvision's layout and names
(:mod:`axial_kd_tf.models.encoders`), so a torchvision ``state_dict`` maps onto them key by key:

===================================  =====================================================
torchvision key                      Keras layer (weights)
===================================  =====================================================
``conv1.weight``                     ``encoder_conv1`` (kernel, ``(out, in, kh, kw)`` → ``(kh, kw, in, out)``)
``bn1.{weight,bias,running_*}``      ``encoder_bn1`` (gamma, beta, moving mean, moving variance)
``layer3.2.conv1.weight``            ``encoder_layer3_block2_conv1``
``layer2.0.downsample.0.weight``     ``encoder_layer2_block0_downsample_conv``
``layer2.0.downsample.1.*``          ``encoder_layer2_block0_downsample_bn``
``fc.*``, ``*.num_batches_tracked``  not used (classifier; BatchNorm step counter)
===================================  =====================================================

``in_channels != 3`` adapts ``conv1`` as SMP's ``encoders/_utils.py`` (``patch_first_conv`` /
``change_conv_in_channels``) does: the sum of the RGB kernels for one channel, otherwise the RGB kernels repeated
cyclically and scaled by ``3 / in_channels`` (:func:`adapt_first_conv_kernel`).

``encoder_weights: imagenet`` takes the checkpoint from, in order: the weights cache (:func:`weights_dir`), torch.hub's
cache (a machine that ran torchvision already has it) or a download into the weights cache with
:func:`axial_kd_tf.data.download.fetch` (``.part`` file, resume, retries, then rename). The sha256 prefix in the file
name is checked as torch.hub's ``check_hash`` does. ``encoder_weights: <path>`` reads a local ``.pth`` instead
(offline machines); a file named like a published checkpoint (``resnet18-f37072fd.pth``) is checked the same way.
The files are read by :func:`axial_kd_tf.models.torch_checkpoint.read_torch_state_dict`: torch is not needed.

Licence: torchvision is BSD-3-Clause; the weights were trained on ImageNet, whose terms of access (non-commercial
research and education) may apply to them. The caller decides whether that permits their use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from axial_kd_tf.errors import UserError

# The native ResNets' blocks per stage (torchvision's BasicBlock layout).
NATIVE_RESNETS: dict[str, tuple[int, ...]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def adapt_first_conv_kernel(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """SMP's ``patch_first_conv`` for a Keras ``(kh, kw, 3, out)`` kernel.

    ``in_channels == 1``: the sum over the RGB kernels; otherwise the RGB kernels repeated cyclically up to
    ``in_channels`` and scaled by ``3 / in_channels`` (so a grey image repeated on all channels keeps the response).
    """
    rgb = kernel.shape[2]
    if in_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    idx = np.arange(in_channels) % rgb
    return kernel[:, :, idx, :] * (rgb / in_channels)

__all__ = ["TorchvisionCheckpoint", "TORCHVISION_IMAGENET", "WEIGHTS_DIR_ENV", "weights_dir", "torch_hub_dir",
           "imagenet_checkpoint", "checkpoint_file", "checkpoint_path", "torchvision_resnet_keys",
           "check_torchvision_resnet", "load_torchvision_resnet"]

WEIGHTS_DIR_ENV = "AXIAL_KD_WEIGHTS_DIR"


@dataclass(frozen=True)
class TorchvisionCheckpoint:
    """A published torchvision checkpoint; ``sha256`` is the prefix its file name carries (torch.hub convention)."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


#: torchvision ``ResNet18_Weights.IMAGENET1K_V1`` / ``ResNet34_Weights.IMAGENET1K_V1`` (what SMP's resnets load).
TORCHVISION_IMAGENET: dict[str, TorchvisionCheckpoint] = {
    "resnet18": TorchvisionCheckpoint("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"),
    "resnet34": TorchvisionCheckpoint("https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
}


def weights_dir() -> Path:
    """Where downloaded weights go: ``$AXIAL_KD_WEIGHTS_DIR``, else ``~/.cache/axial_kd_tf/weights``."""
    base = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "axial_kd_tf" / "weights"


def torch_hub_dir() -> Path:
    """torch.hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``), without importing torch."""
    if os.environ.get("TORCH_HOME"):
        home = Path(os.environ["TORCH_HOME"]).expanduser()
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "torch"
    return home / "hub" / "checkpoints"


def _verified(path: Path, sha256: str) -> bool:
    from axial_kd_tf.data.download import digest_matches, file_digest

    return path.is_file() and digest_matches(file_digest(path, "sha256"), sha256)


def imagenet_checkpoint(name: str) -> Path:
    """The verified torchvision ImageNet checkpoint of ``name`` (``resnet18`` / ``resnet34``), downloaded if needed.

    ``$AXIAL_KD_DOWNLOAD_MIRROR`` fetches ``<mirror>/weights/<file>`` instead of download.pytorch.org.
    """
    from axial_kd_tf.data import download  # lazily: the models package stays light to import

    entry = TORCHVISION_IMAGENET[name]
    for candidate in (weights_dir() / entry.filename, torch_hub_dir() / entry.filename):
        if _verified(candidate, entry.sha256):
            return candidate
    mirror = os.environ.get(download.MIRROR_ENV)
    url = f"{mirror.rstrip('/')}/weights/{entry.filename}" if mirror else entry.url
    remote = download.RemoteFile(entry.filename, url, "sha256", entry.sha256)
    try:
        download.fetch(remote, weights_dir())
    except UserError as exc:
        raise UserError(f"{exc} (ImageNet weights of encoder '{name}'; on a machine without network, download "
                        f"{entry.url} elsewhere and set model.encoder_weights to its path, or set "
                        f"{WEIGHTS_DIR_ENV} to a folder holding {entry.filename})") from None
    return weights_dir() / entry.filename


def checkpoint_file(name: str, path: str | Path) -> Path:
    """A local ``.pth`` given as ``encoder_weights``: it must exist; a file named like a published torchvision
    checkpoint must have the sha256 prefix its name carries (other names are the user's own checkpoints)."""
    from axial_kd_tf.data.download import digest_matches, file_digest

    file = Path(path).expanduser()
    entry = TORCHVISION_IMAGENET[name]
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise UserError(f"model.encoder_weights file '{file}' {what}; give the path of a torchvision {name} checkpoint "
                        f"({entry.url}), or set encoder_weights: imagenet to download it")
    published = {e.filename: e for e in TORCHVISION_IMAGENET.values()}.get(file.name)
    if published is not None:
        got = file_digest(file, "sha256")
        if not digest_matches(got, published.sha256):
            raise UserError(f"'{file}' failed sha256 verification (got {got[:16]}..., its name says "
                            f"{published.sha256}): it is damaged or incomplete; download it again from "
                            f"{published.url}")
    return file


def checkpoint_path(name: str, weights: str) -> Path:
    """``encoder_weights`` of a native resnet → the checkpoint file: ``imagenet`` (cache or download) or a path."""
    return imagenet_checkpoint(name) if weights == "imagenet" else checkpoint_file(name, weights)


# --------------------------------------------------------------------------------------------------------------
# state_dict → Keras layers
# --------------------------------------------------------------------------------------------------------------

_BN = ("weight", "bias", "running_mean", "running_var")  # the order of Keras' BatchNormalization weights


def torchvision_resnet_keys(blocks: tuple[int, ...]) -> dict[str, tuple[str, str]]:
    """Keras layer name → (torchvision module name, ``"conv"`` / ``"bn"``) for a basic-block ResNet with ``blocks``.

    Block 0 of layer2–layer4 has a ``downsample`` (torchvision adds one where the stride or the width changes).
    """
    table = {"encoder_conv1": ("conv1", "conv"), "encoder_bn1": ("bn1", "bn")}
    for layer, n in enumerate(blocks, start=1):
        for b in range(n):
            k, t = f"encoder_layer{layer}_block{b}_", f"layer{layer}.{b}."
            table.update({f"{k}conv1": (f"{t}conv1", "conv"), f"{k}bn1": (f"{t}bn1", "bn"),
                          f"{k}conv2": (f"{t}conv2", "conv"), f"{k}bn2": (f"{t}bn2", "bn")})
            if b == 0 and layer > 1:
                table.update({f"{k}downsample_conv": (f"{t}downsample.0", "conv"),
                              f"{k}downsample_bn": (f"{t}downsample.1", "bn")})
    return table


def _expected_keys(table: Mapping[str, tuple[str, str]]) -> list[str]:
    return [f"{module}.{p}" for module, kind in table.values() for p in (("weight",) if kind == "conv" else _BN)]


def check_torchvision_resnet(state: Mapping[str, np.ndarray], name: str, source: str = "the state dict") -> None:
    """``state`` has exactly the keys of a torchvision ``name`` (``resnet18``/``resnet34``) ``state_dict``.

    ``fc.*`` and ``*.num_batches_tracked`` may be there or not. Both directions matter: resnet34's keys include all
    of resnet18's, so only the unexpected ones reveal a resnet34 checkpoint given for a resnet18.

    Raises:
        UserError: naming ``source``, a missing or unexpected key and the checkpoint to use.
    """
    expected = _expected_keys(torchvision_resnet_keys(NATIVE_RESNETS[name]))
    missing = [k for k in expected if k not in state]
    known = set(expected)
    unexpected = [k for k in state if k not in known and not k.startswith("fc.")
                  and not k.endswith(".num_batches_tracked")]
    if missing or unexpected:
        what = (f"lacks {len(missing)} of its keys (e.g. '{missing[0]}')" if missing
                else f"has keys it does not have (e.g. '{unexpected[0]}')")
        raise UserError(f"{source} is not a torchvision {name} state dict: it {what}; give a {name} checkpoint "
                        f"(torchvision layout, e.g. {TORCHVISION_IMAGENET[name].filename})")


def load_torchvision_resnet(layers: Mapping[str, Any], state: Mapping[str, np.ndarray], name: str,
                            source: str = "the state dict") -> None:
    """Set the weights of a native ``resnet18``/``resnet34`` encoder's ``layers`` (Keras name → layer) from ``state``.

    This is the converter: ``state`` (``{key: np.ndarray}``, e.g. from
    :func:`~axial_kd_tf.models.torch_checkpoint.read_torch_state_dict`) must be a whole torchvision ResNet
    ``state_dict`` of that depth (:func:`check_torchvision_resnet`); ``layers`` are the encoder's layers (other layers
    must have no weights), possibly only the stages an ``encoder_depth < 5`` built. ``conv1`` is adapted to the
    encoder's input channels as SMP does when the checkpoint has 3 and the encoder does not.

    Raises:
        UserError: keys missing or unexpected (another ResNet's checkpoint), or a shape that does not fit; the
            message names ``source`` and the key.
    """
    check_torchvision_resnet(state, name, source)
    table = torchvision_resnet_keys(NATIVE_RESNETS[name])
    loaded = set()
    for keras_name, (module, kind) in table.items():
        layer = layers.get(keras_name)
        if layer is None:  # a stage that encoder_depth did not build
            continue
        if kind == "conv":
            values = [np.transpose(state[f"{module}.weight"], (2, 3, 1, 0))]
            want = tuple(layer.kernel.shape)
            if keras_name == "encoder_conv1" and values[0].shape[2] == 3 and want[2] != 3:
                values[0] = adapt_first_conv_kernel(values[0], int(want[2]))
        else:
            values = [state[f"{module}.{p}"] for p in _BN]
        for p, value, var in zip(("weight",) if kind == "conv" else _BN, values, layer.weights):
            if tuple(value.shape) != tuple(var.shape):
                raise UserError(f"{source}: '{module}.{p}' has shape {tuple(state[f'{module}.{p}'].shape)}, which "
                                f"does not fit {keras_name} {tuple(var.shape)} (Keras layout); give a torchvision "
                                f"{name} checkpoint for this encoder's input channels")
        layer.set_weights([v.astype(np.float32) for v in values])
        loaded.add(keras_name)
    unset = sorted(n for n, layer in layers.items() if layer.weights and n not in loaded)
    if unset:  # the encoder grew a layer the table does not know: a bug, not a user error
        raise RuntimeError(f"{name}: no torchvision weights for {', '.join(unset)}")
