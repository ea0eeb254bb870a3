"""Small real PyTorch models used by the tests (and by ``--model models_for_tests:...`` in CLI tests)."""

import torch
import torch.nn as nn


class SoftmaxRegression(nn.Module):
    """A linear model: its own linearization, so the simulator must reproduce its training exactly."""

    def __init__(self, d_in, num_classes):
        super().__init__()
        self.fc = nn.Linear(d_in, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class SmallConvNet(nn.Module):
    def __init__(self, num_classes=3, width=6, in_ch=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=2, bias=False)
        self.gn = nn.GroupNorm(2, width)
        self.head = nn.Linear(width, num_classes)
        self.head_names = ("head.weight", "head.bias")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.gn(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def tiny_cnn(num_classes, image_size=16, seed=0):
    """Factory for CLI tests: a small random CNN (the 'pretrained' weights are just seeded)."""
    torch.manual_seed(seed)
    m = SmallConvNet(num_classes)
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m


def returns_tuple(num_classes):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)

        def forward(self, x):
            return self.fc(x.mean((2, 3))), None

    return Bad()


def linear_features(num_classes):
    """A softmax regression on the 6 features of ``datasets_for_tests.Features``: linear in all its weights."""
    torch.manual_seed(0)
    return SoftmaxRegression(6, num_classes)


def ignores_num_classes(num_classes):
    """A factory whose head has 10 outputs whatever it is asked for."""
    return SoftmaxRegression(6, 10)


torch.manual_seed(1)
an_instance = SoftmaxRegression(6, 3)
"""A model itself, not a factory (``--model models_for_tests:an_instance``, as a notebook's ``__main__:model``)."""
