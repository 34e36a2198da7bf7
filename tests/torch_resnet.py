"""A torchvision-layout PyTorch ResNet (basic blocks), built by hand so the tests need torch but not torchvision.

Module and parameter names are torchvision's (``torchvision/models/resnet.py``), so its ``state_dict()`` has exactly
the keys of torchvision's published checkpoints (plus ``fc.*`` when ``num_classes`` is given).
"""

from __future__ import annotations

from typing import Any, Optional


def torch_resnet(torch: Any, blocks: tuple[int, ...], in_channels: int = 3, num_classes: Optional[int] = None,
                 seed: int = 0) -> Any:
    """The ResNet with random weights and random BatchNorm statistics, in eval mode; ``forward`` returns the stage
    outputs (strides 2, 4, 8, 16, 32) like the encoders' ``maps[1:]``."""
    nn = torch.nn

    class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
                layer = []
                for b in range(n):
                    layer.append(BasicBlock(inplanes, planes, (1 if i == 1 else 2) if b == 0 else 1))
                    inplanes = planes
                setattr(self, f"layer{i}", nn.Sequential(*layer))
            if num_classes:  # the classifier torchvision's checkpoints carry; the encoders ignore it
                self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            feats = [x]
            x = self.layer1(self.maxpool(x))
            feats.append(x)
            for i in (2, 3, 4):
                x = getattr(self, f"layer{i}")(x)
                feats.append(x)
            return feats

    torch.manual_seed(seed)
    net = ResNet()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):  # non-trivial statistics, so a mix-up of the four would show
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2), mod.running_var.uniform_(0.5, 1.5)
    return net.eval()
