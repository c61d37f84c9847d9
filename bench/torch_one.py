"""A minimal PyTorch ONE: the reference the throughput benchmark compares with.

The CIFAR ResNet of ONE's official code (github Lan1991Xu/ONE_NeurIPS2018):
a shared stem and first two stages, the last stage replicated into
`num_branches` branches, each with global average pooling and a linear
classifier, and the gate (pool -> Linear -> BatchNorm1d -> ReLU -> softmax)
weighting the branch logits into the ensemble teacher. The training step
is ONE's loss (sum of the branches' and the ensemble's cross-entropies,
plus the temperature-scaled KL from the detached teacher to every branch)
with SGD (momentum 0.9, Nesterov, weight decay 1e-4), in channels-last
memory format, the fastest on CPUs with oneDNN. With `bfloat16=True` the
forward pass and the loss run under `torch.autocast("cpu", torch.bfloat16)`
(PyTorch's mixed precision: float32 weights and optimizer, bfloat16
convolutions and matrix products), the counterpart of Keras'
`mixed_bfloat16` policy.

PyTorch is an optional dependency of the benchmarks only
(`pip install torch`); keras-one never imports this file.
"""

import torch
from torch import nn
from torch.nn import functional


class BasicBlock(nn.Module):
    def __init__(self, in_channels, filters, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != filters:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, filters, 1, stride, bias=False),
                nn.BatchNorm2d(filters),
            )

    def forward(self, x):
        y = functional.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return functional.relu(y + self.shortcut(x))


def _stage(in_channels, filters, blocks, stride):
    layers = [BasicBlock(in_channels, filters, stride)]
    layers += [BasicBlock(filters, filters, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ONENet(nn.Module):
    """ONE's CIFAR ResNet (basic blocks) with a gated ensemble."""

    def __init__(self, depth=32, num_classes=10, num_branches=3):
        super().__init__()
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.stage1 = _stage(16, 16, blocks, 1)
        self.stage2 = _stage(16, 32, blocks, 2)
        self.branches = nn.ModuleList(
            [
                nn.Sequential(
                    _stage(32, 64, blocks, 2),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(64, num_classes),
                )
                for _ in range(num_branches)
            ]
        )
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_branches),
            nn.BatchNorm1d(num_branches),
            nn.ReLU(inplace=True),
            nn.Softmax(dim=1),
        )

    def forward(self, x):
        shared = self.stage2(self.stage1(self.stem(x)))
        logits = [branch(shared) for branch in self.branches]
        gate = self.gate(shared)
        ensemble = (torch.stack(logits, dim=1) * gate.unsqueeze(-1)).sum(1)
        return logits, ensemble


def one_loss(logits, ensemble, labels, temperature=3.0, weight=1.0):
    loss = functional.cross_entropy(ensemble, labels)
    teacher = functional.softmax(ensemble.detach() / temperature, dim=1)
    for z in logits:
        loss = loss + functional.cross_entropy(z, labels)
        loss = loss + weight * temperature**2 * functional.kl_div(
            functional.log_softmax(z / temperature, dim=1),
            teacher,
            reduction="batchmean",
        )
    return loss


class TorchONEStep:
    """A callable training step of ONE in PyTorch on one fixed batch."""

    def __init__(
        self,
        images,
        labels,
        depth=32,
        num_classes=10,
        num_branches=3,
        threads=None,
        bfloat16=False,
    ):
        self.bfloat16 = bfloat16
        if threads:
            torch.set_num_threads(threads)
        self.model = ONENet(depth, num_classes, num_branches)
        self.model = self.model.to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=0.1,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
        )
        # NHWC NumPy images to an NCHW tensor stored channels-last.
        self.images = (
            torch.from_numpy(images)
            .permute(0, 3, 1, 2)
            .contiguous(memory_format=torch.channels_last)
        )
        self.labels = torch.from_numpy(labels.astype("int64"))

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bfloat16):
            logits, ensemble = self.model(self.images)
            loss = one_loss(logits, ensemble, self.labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
