#!/usr/bin/env python
"""Self-distillation of a plain PyTorch segmentation network with the Keras ``AxialTeacherHead`` (torch backend).

    KERAS_BACKEND=torch python examples/torch_self_distillation.py [--steps 60] [--size 64] [--batch 8] [--pool 2]

The method of "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University) on a network
that knows nothing about Keras:

* the **student** is an ordinary ``torch.nn.Module`` (NCHW in, NCHW logits out);
* the **teacher** is :class:`axial_kd_tf.layers.AxialTeacherHead` (position-sensitive axial attention, Axial-DeepLab
  Eq. 4) on the student's logits. Under ``KERAS_BACKEND=torch`` a Keras layer *is* a ``torch.nn.Module``: its weights
  are ``torch.nn.Parameter`` s (``head.parameters()``), it runs eagerly in autograd, and it lives on the device Keras
  picks (CUDA when available). Keras layers are channels-last, so the logits are permuted to NHWC;
* the loss is :func:`axial_kd_tf.losses.self_distillation_loss` (paper Eq. 1, the library's defaults: CE(student) +
  CE(teacher) + T²·KL at T = 2 on the pixels the teacher gets right); ``keras.ops`` on torch tensors gives torch
  tensors, so ``loss.backward()`` reaches both networks;
* one ``torch.optim.Adam`` updates the student's and the head's parameters;
* at inference the student runs alone, at exactly its own cost (the head is only needed for training).

The data are synthetic (noisy discs whose class sets their brightness), so the example runs anywhere in seconds.
``tests/test_torch_example.py`` runs it for a few steps and checks that the loss falls, that every weight of the head
is trained, and that the head computes under torch what it computes under TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported; an explicit other backend is an error

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python examples/...` puts examples/ on the path, not the repository root
    sys.path.insert(0, str(_ROOT))

import keras  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.layers import AxialTeacherHead  # noqa: E402
from axial_kd_tf.losses import self_distillation_loss  # noqa: E402

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------- the student
class TinySegNet(nn.Module):
    """A small encoder–decoder in plain PyTorch (any NCHW logits network would do: an SMP ``Unet``, a DeepLab…)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.enc1 = block(in_channels, width)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), block(width, 2 * width))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = block(3 * width, width)
        self.logits = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        return self.logits(self.dec(torch.cat([e1, self.up(e2)], dim=1)))


# ---------------------------------------------------------------------------------------------------------- data
def synthetic_batch(batch: int, size: int, num_classes: int, generator: torch.Generator,
                    device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [B, 1, S, S] float32, labels [B, S, S] int64)``: discs of classes 1..K−1 on background 0, each
    class its own brightness, under noise strong enough that a pixel alone is ambiguous."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(batch, size, size, dtype=torch.int64)
    for b in range(batch):
        for _ in range(6):
            cy, cx = torch.randint(0, size, (2,), generator=generator).tolist()
            r = int(torch.randint(size // 10 + 1, size // 4 + 2, (1,), generator=generator))
            k = int(torch.randint(1, num_classes, (1,), generator=generator))
            labels[b][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    images = labels.float()[:, None] / (num_classes - 1)
    images = images + 0.35 * torch.randn(images.shape, generator=generator)
    return images.to(device), labels.to(device)


# ----------------------------------------------------------------------------------------------------- the method
def device_name() -> str:
    """Where Keras' torch backend puts the head's variables (CUDA when available); the student goes there too."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build(num_classes: int = 4, pool_size: int = 2, seed: int = 0) -> tuple[TinySegNet, AxialTeacherHead]:
    """The student network and the teacher head (library defaults: two 32-channel axial blocks, 1 head, zero gate,
    detached input)."""
    if keras.backend.backend() != "torch":
        raise UserError(f"this example needs Keras' torch backend, but KERAS_BACKEND is "
                        f"'{keras.backend.backend()}': run it with KERAS_BACKEND=torch")
    # Not keras.utils.set_random_seed: it also imports TensorFlow wherever TensorFlow is installed. Keras draws its
    # initial weights from a generator seeded through Python's `random`.
    random.seed(seed)
    torch.manual_seed(seed)
    net = TinySegNet(in_channels=1, num_classes=num_classes).to(device_name())
    head = AxialTeacherHead(num_classes, pool_size=pool_size)
    head.build((None, None, None, num_classes))  # variables exist now, so the optimizer can hold them
    return net, head


def train_step(net: nn.Module, head: AxialTeacherHead, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> dict:
    """One optimisation step of student and teacher on the self-distillation loss; returns its parts as floats."""
    student = net(images).permute(0, 2, 3, 1)  # NCHW -> NHWC: Keras layers and the loss are channels-last
    teacher = head(student, training=True)  # a torch.nn.Module call; BatchNorms use batch statistics
    loss, parts = self_distillation_loss(labels, student, teacher)  # the library defaults (DistillConfig)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in parts.items()}


def train(net: nn.Module, head: AxialTeacherHead, steps: int, batch: int, size: int, lr: float = 3e-3,
          seed: int = 0, log: Log = print) -> list[dict]:
    """``steps`` Adam steps on fresh synthetic batches; one dict of loss parts per step."""
    net.train()
    # The head's non-trainable weights (BatchNorm moving statistics) have requires_grad=False: Keras updates them.
    params = list(net.parameters()) + [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        images, labels = synthetic_batch(batch, size, head.num_classes, generator, device_name())
        history.append(train_step(net, head, optimizer, images, labels))
        if step == 1 or step % 10 == 0 or step == steps:
            h = history[-1]
            gate = float(head.gate.value.detach())
            log(f"step {step}/{steps}: loss {h['loss']:.4f} (student CE {h['student_ce']:.4f}, teacher CE "
                f"{h['teacher_ce']:.4f}, distill {h['distill_loss']:.4f}), gate {gate:+.4f}")
    return history


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Deployment: the student alone (no head, no Keras), class ids ``[B, H, W]``."""
    net.eval()
    return net(images).argmax(dim=1)


def miou(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in ``labels`` or ``pred``."""
    ious = []
    for k in range(num_classes):
        inter = ((pred == k) & (labels == k)).sum().item()
        union = ((pred == k) | (labels == k)).sum().item()
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torch_self_distillation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="square image size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--classes", type=int, default=4, help="classes incl. background (default: %(default)s)")
    p.add_argument("--pool", type=int, default=2, help="teacher pool_size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log: Log = print) -> dict:
    if args.steps < 1 or args.batch < 1 or args.classes < 2 or args.pool < 1:
        raise UserError("--steps, --batch and --pool must be >= 1 and --classes >= 2")
    if args.size < 8 or args.size % 2:
        raise UserError(f"--size must be an even number >= 8 (the student halves it once), got {args.size}")
    net, head = build(args.classes, args.pool, args.seed)
    log(f"student: {sum(p.numel() for p in net.parameters()):,} parameters (PyTorch); teacher head: "
        f"{sum(p.numel() for p in head.parameters()):,} (Keras {keras.__version__}, torch backend); "
        f"device {device_name()}")
    t0 = time.perf_counter()
    history = train(net, head, args.steps, args.batch, args.size, args.lr, args.seed, log)
    images, labels = synthetic_batch(2 * args.batch, args.size, args.classes,
                                     torch.Generator().manual_seed(args.seed + 1), device_name())
    student_miou = miou(predict(net, images), labels, args.classes)
    with torch.no_grad():
        teacher = head(net(images).permute(0, 2, 3, 1), training=False)
    teacher_miou = miou(teacher.argmax(dim=-1), labels, args.classes)
    log(f"held-out synthetic batch: student mIoU {100 * student_miou:.1f} (deployed alone), teacher "
        f"{100 * teacher_miou:.1f}; {time.perf_counter() - t0:.1f} s")
    return {"history": history, "student_miou": student_miou, "teacher_miou": teacher_miou}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        run(parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
