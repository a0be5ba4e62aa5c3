"""Which kernel configurations the autotuners try."""

from __future__ import annotations

import os

ENV_VAR = "LOWBIT_AUTOTUNE"


def candidate_configs(configs: list) -> list:
    """All of ``configs``, or only the first where LOWBIT_AUTOTUNE=0: tests set it, since every new
    shape would otherwise compile and time each candidate; they check every config on its own."""
    return configs[:1] if os.environ.get(ENV_VAR) == "0" else configs
