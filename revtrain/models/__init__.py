"""Recurrent models: standard (stored or checkpointed BPTT) and reversible."""
from .base import RecurrentModel
from .results import BPTTStats, InputGrads
from .dropout import DropoutMasks
from .rnn import RNN
from .gru import GRU
from .mdrnn import MDRNN
from .lstm import LSTM
from .momentum_rnn import MomentumRNN
from .revgru import RevGRU
from .revlstm import RevLSTM
from .revmdrnn import RevMDRNN
