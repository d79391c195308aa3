"""revtrain: train recurrent networks under tight memory by exact reversal.

Every step is computed in fixed-point integers; the bits a step destroys are
kept, entropy coded, in an information buffer, so backpropagation through time
and SGD with momentum can be run backwards bit for bit instead of storing
their trajectories.
"""
from .errors import FixedPointError, ReversalError, DivergenceError
from .fixed_point import DEFAULT_FRAC_BITS, to_fixed, from_fixed, ratio_from_float
from .buffer import InfoBuffer
from .exact import exact_mul, exact_div
from ._threads import set_blas_threads, get_blas_threads, set_row_threads, get_row_threads
from .models import RecurrentModel, BPTTStats, InputGrads, DropoutMasks
from .models import RNN, LSTM, GRU, MDRNN                      # standard: stored / checkpointed BPTT
from .models import MomentumRNN, RevGRU, RevLSTM, RevMDRNN     # reversible: exact reversal
from .optim import ExactSGD, ExactSGDState, Adam, AdamState
from .hypergrad import hypergradient, HyperGradient, HyperStats
from .data import (DataError, CharVocab, TextCorpus, builtin_text, load_text, char_corpus,
                   text_windows, adding_task, copy_task, digits_task, GridTask)
from .history import History
from .model_file import ModelFileError
from .trainer import Trainer, StopTraining, step_dropout_seed

__version__ = "0.1.0"

__all__ = [
    "FixedPointError", "ReversalError", "DivergenceError",
    "DEFAULT_FRAC_BITS", "to_fixed", "from_fixed", "ratio_from_float",
    "InfoBuffer", "exact_mul", "exact_div",
    "set_blas_threads", "get_blas_threads", "set_row_threads", "get_row_threads",
    "RecurrentModel", "BPTTStats", "InputGrads", "DropoutMasks",
    "RNN", "LSTM", "GRU", "MDRNN",
    "MomentumRNN", "RevGRU", "RevLSTM", "RevMDRNN",
    "ExactSGD", "ExactSGDState", "Adam", "AdamState",
    "hypergradient", "HyperGradient", "HyperStats",
    "DataError", "CharVocab", "TextCorpus", "builtin_text", "load_text", "char_corpus",
    "text_windows", "adding_task", "copy_task", "digits_task", "GridTask",
    "Trainer", "History", "ModelFileError", "StopTraining", "step_dropout_seed",
]
