"""The scoring engine: length buckets, device mesh, streaming resumable scoring, ScoreStore.

>>> from glmjax.engine import score, ScoreStore
>>> score(model, "windows.h5", "scores.h5", pll="strided:4")
>>> ScoreStore("scores.h5").column("mean_logp")
"""

from glmjax.engine.runner import (
           Scorer,
           ScoreSummary,
           ScoringMode,
           configure_compilation_cache,
           parse_mode,
           score,
)
from glmjax.engine.scorestore import (
           MINK_PERCENTS,
           MODES,
           ScoreStore,
           ScoreStoreWriter,
           check_compatible,
           merge_scores,
)

__all__ = ["MINK_PERCENTS", "MODES", "ScoreStore", "ScoreStoreWriter", "ScoreSummary", "Scorer", "ScoringMode",
           "check_compatible", "configure_compilation_cache", "merge_scores", "parse_mode", "score"]
