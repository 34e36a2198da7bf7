"""The architecture registry: options are checked against the builder's signature before anything is built, and an
error raised while building is the builder's own (a ``TypeError`` there is a bug, not a bad option)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import build_network, registry

CALLS: list = []


@pytest.fixture
def throwaway():
    """Register ``_test_ok`` (records its calls), ``_test_buggy`` (a TypeError inside) and ``_test_required`` (a
    required option); remove them afterwards."""

    def ok(num_classes, in_channels=3, encoder=None, encoder_weights=None, width=8, depth=2):
        CALLS.append(dict(width=width, depth=depth))
        return "built"

    def buggy(num_classes, in_channels=3, encoder=None, encoder_weights=None, width=8):
        return width + "channels"  # TypeError: a bug in the builder

    def required(num_classes, in_channels=3, encoder=None, encoder_weights=None, *, width):
        return "built"

    names = {"_test_ok": ok, "_test_buggy": buggy, "_test_required": required}
    CALLS.clear()
    try:
        for name, fn in names.items():
            registry.register_architecture(name)(fn)
        yield
    finally:
        for name in names:
            registry._REGISTRY.pop(name, None)


def test_unknown_option_names_the_closest_valid_one_before_building(throwaway):
    with pytest.raises(UserError) as info:
        build_network("_test_ok", num_classes=2, widht=4)
    assert str(info.value) == ("model.options for '_test_ok': unknown option 'widht'; did you mean 'width'? "
                               "(valid: width, depth)")
    assert CALLS == []
    assert build_network("_test_ok", num_classes=2, width=4) == "built" and CALLS == [dict(width=4, depth=2)]


def test_unknown_option_of_a_zoo_architecture():
    with pytest.raises(UserError, match=r"^model.options for 'unet': unknown option 'decoder_chanels'; did you mean "
                                        r"'decoder_channels'\? \(valid: encoder_depth, .*decoder_channels"):
        build_network("unet", num_classes=2, decoder_chanels=(16, 8, 4))
    with pytest.raises(UserError, match=r"unknown option 'activation' \(valid: encoder_depth"):
        build_network("deeplabv3plus", num_classes=2, activation="softmax")


def test_type_error_inside_a_builder_is_not_rewritten(throwaway):
    with pytest.raises(TypeError, match="unsupported operand") as info:
        build_network("_test_buggy", num_classes=2, width=4)
    assert not isinstance(info.value, UserError)


def test_missing_required_option_is_a_user_error(throwaway):
    with pytest.raises(UserError, match=r"^model.options for '_test_required' are invalid: missing a required "
                                        r"argument: 'width'$"):
        build_network("_test_required", num_classes=2)
    assert build_network("_test_required", num_classes=2, width=3) == "built"


def test_build_network_loads_torchvision_weights_from_a_local_file(tmp_path):
    """``encoder_weights: <path>`` reaches the encoder through the registry: the encoder gets the checkpoint (conv1
    adapted to one channel as SMP does), the decoder and head keep their own initialisation."""
    import torch  # a test requirement (requirements-test.txt, the "test" extra): fails rather than skips
    from torch_resnet import torch_resnet

    net = torch_resnet(torch, (2, 2, 2, 2), 3, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    model = build_network("linknet", encoder="resnet18", num_classes=2, in_channels=1,
                          encoder_weights=str(tmp_path / "resnet18.pth"), encoder_depth=3)
    rgb = net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(model.get_layer("encoder_conv1").kernel.numpy(), rgb.sum(axis=2, keepdims=True),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(model.get_layer("encoder_layer2_block1_bn2").moving_mean.numpy(),
                                  net.layer2[1].bn2.running_mean.numpy())
    decoder_bns = [layer for layer in model.layers
                   if layer.name.startswith("decoder") and isinstance(layer, keras.layers.BatchNormalization)]
    assert decoder_bns and all(np.all(layer.moving_variance.numpy() == 1.0) for layer in decoder_bns)
