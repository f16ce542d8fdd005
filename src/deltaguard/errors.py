"""The exceptions deltaguard raises on purpose.

Every expected failure is a ``DeltaguardError`` whose message is one line naming the thing that is
wrong and what would fix it; the CLI prints it as ``error: <message>`` and exits non-zero. Anything
else escaping the library is a bug.
"""

from __future__ import annotations


class DeltaguardError(Exception):
    """Expected failure: one line naming the thing and the fix."""

    exit_code = 1


class ConfigError(DeltaguardError, ValueError):
    """An invalid setting, name or command-line value (usage error, exit code 2)."""

    exit_code = 2


class RegistryError(DeltaguardError):
    """A registry was asked to hold two things under one name (a programming error in a plug-in)."""


class FormatError(DeltaguardError):
    """An artifact on disk is corrupt, truncated, of an unknown format or of another version."""


class IncompatibleBaseError(FormatError):
    """A delta was made for another base model than the one it is applied to."""


class AssetError(DeltaguardError):
    """A pinned external asset (wheel, model, data file) is missing, unreachable or hash-mismatched."""


class ModelLoadError(DeltaguardError):
    """A path or name does not hold a loadable causal language model."""


class ModelOutputError(DeltaguardError):
    """A model produced unusable output (NaN or infinite logits), e.g. from corrupt weights or a corrupt delta."""


class EndpointError(DeltaguardError):
    """An OpenAI-compatible endpoint that generates replies refused a request or stopped answering."""


class JudgeError(DeltaguardError):
    """A judge could not produce verdicts at all (as opposed to one unparseable verdict)."""
