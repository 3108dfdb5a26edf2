import torch
from torch import nn


class ModerateCNN(nn.Module):
    """A small stand-in with cifar10-sim's class name: 3x32x32 images, 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5)
        self.pool = nn.MaxPool2d(4, 4)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))
