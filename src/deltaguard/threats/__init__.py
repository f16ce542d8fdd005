"""Fine-tuning threats (harmful, backdoor, targeted, benign control) and the aligner (training lives in ``training``).

``deltaguard list threats`` shows the registry; ``attack(base, HarmfulFinetuneConfig(), out_dir=...)``
builds one; ``align(...)`` makes the safety-aligned base the threats start from.
"""

from __future__ import annotations

from deltaguard.threats.align import AlignConfig, align
from deltaguard.threats.backdoor import BackdoorConfig, HarmfulBackdoor
from deltaguard.threats.base import (
    BuildContext, Responder, Threat, ThreatConfig, ThreatScore, get_threat, threat_config, threats,
)
from deltaguard.threats.benign import BenignConfig, BenignFinetune
from deltaguard.threats.build import AttackResult, attack, build_pairs
from deltaguard.threats.harmful import HarmfulFinetune, HarmfulFinetuneConfig
from deltaguard.threats.targeted import TargetedConfig, TargetedManipulation
from deltaguard.training import ChatPair, TrainConfig, TrainResult, train_sft

__all__ = [
    "AlignConfig", "AttackResult", "BackdoorConfig", "BenignConfig", "BenignFinetune", "BuildContext", "ChatPair",
    "HarmfulBackdoor", "HarmfulFinetune", "HarmfulFinetuneConfig", "Responder", "TargetedConfig",
    "TargetedManipulation", "Threat", "ThreatConfig", "ThreatScore", "TrainConfig", "TrainResult", "align", "attack",
    "build_pairs", "get_threat", "threat_config", "threats", "train_sft",
]
