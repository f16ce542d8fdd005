"""The end-to-end study behind ``deltaguard demo``: pull → align → attack ×4 → audit ×4 → report.

Modules: ``config`` (``StudyConfig`` and the YAML profiles in ``profiles/``), ``deltaguard.steps`` (the keyed-step
runner every pipeline reuses), ``alignment`` (the alignment check), ``lens_step`` and ``run``
(``run_study``, results assembly). Profiles: ``default`` is planned for a 2-core CPU (a first run of about 40
minutes, 19 of them building the compact guard once per machine; a cached rerun within seconds); ``full`` is the
complete sweep with paper-sized settings, for users with time or a GPU. Every reduction the default makes is listed in its profile's notes and
printed in the report.
"""

from deltaguard.study.alignment import AlignmentCheck, check_alignment
from deltaguard.study.config import PROFILES, StudyConfig, profile_data, study_profile
from deltaguard.study.run import StudyResult, run_study
from deltaguard.steps import Steps

__all__ = ["PROFILES", "AlignmentCheck", "Steps", "StudyConfig", "StudyResult", "check_alignment", "profile_data",
           "run_study", "study_profile"]
