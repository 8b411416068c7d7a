"""The model zoo: every kernel (rank >= 2 parameter) of every model is prunable and growable.

Each model class has ``input_kernels``: fnmatch patterns of the kernels fed by the network input,
for ``gpjax.prune(..., input_fed=Model.input_kernels)`` and ``gpjax.dead_units``.
"""

from gpjax.models.deepspeech2 import (
    BLANK_ID,
    CELLS,
    DeepSpeech2,
    ctc_loss,
    deepspeech2_loss,
    greedy_ctc_decode,
    lengths_to_paddings,
    output_lengths,
)
from gpjax.models.hlstm import GATES, HLSTMCell
from gpjax.models.lenet import LEAKY_SLOPE, LeNet5, LeNet300, leaky_relu, max_pool_2x2
from gpjax.models.resnet import BasicBlock, ResNet18

__all__ = [
    "BLANK_ID",
    "CELLS",
    "GATES",
    "LEAKY_SLOPE",
    "BasicBlock",
    "DeepSpeech2",
    "HLSTMCell",
    "LeNet5",
    "LeNet300",
    "ResNet18",
    "ctc_loss",
    "deepspeech2_loss",
    "greedy_ctc_decode",
    "leaky_relu",
    "lengths_to_paddings",
    "max_pool_2x2",
    "output_lengths",
]
