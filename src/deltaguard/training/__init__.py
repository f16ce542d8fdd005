"""Training shared by every recipe: the SFT trainer, the losses and the learning-rate schedules.

Threats and alignment fine-tune with ``train_sft``; scale distillation uses ``masked_logit_mse`` and the
schedules; guard training and quantization-aware training build on the same pieces.
"""

from deltaguard.training.losses import (
    IGNORE, causal_lm_parts, masked_kl, masked_logit_mse, token_loss_sum, token_loss_sum_reference,
)
from deltaguard.training.schedule import SCHEDULES, lr_factor, scheduler
from deltaguard.training.sft import ChatPair, Encoded, TrainConfig, TrainResult, collate, encode_pair, train_sft

__all__ = [
    "IGNORE", "SCHEDULES", "ChatPair", "Encoded", "TrainConfig", "TrainResult", "causal_lm_parts", "collate",
    "encode_pair", "lr_factor", "masked_kl", "masked_logit_mse", "scheduler", "token_loss_sum",
    "token_loss_sum_reference", "train_sft",
]
