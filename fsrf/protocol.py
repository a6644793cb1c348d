"""The evaluation protocol (SPEC section 2): the test conditions, how a model is scored under them, and
the one number a study selects and tunes on.

(Being assembled from ``fsrf/missing.py`` and ``fsrf/train.py``; the names below are final.)
"""

from __future__ import annotations

HEADLINE = "Non0_F1_score"  # SPEC section 5: the headline metric
OBJECTIVE_CONDITION = "objective"  # the summary condition the study optimises (see ``summarise``)
OBJECTIVE = f"val/{HEADLINE}/{OBJECTIVE_CONDITION}"  # per epoch, validation only
BEST_OBJECTIVE = f"best/{OBJECTIVE}"  # the tuning study's objective: the objective at the selected epoch
SELECTION_RULE = f"epoch with the best {OBJECTIVE} (one rule for every seed and metric)"
