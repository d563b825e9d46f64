"""Typed settings: the YAML under conf/ holds every value, once; dataclasses hold the types and ranges.

Design (issue #15). The config groups are described by dataclasses (treesynth/settings/schema.py) whose
fields have types and `bound(...)` ranges but no defaults. The values are written in one place only, the
YAML options (conf/config.yaml, conf/<group>/*.yaml, the generator's profile through `${profile:...}`).
Code never reads a setting with a fallback of its own (`cfg.get("k", 10)`): it reads the node through
`load(node, Cls, "path")` (treesynth/settings/check.py), which returns a `Cls` instance or raises one
TreesynthError line naming the key (`data.hygiene.ngram is missing ...`, `method.pivots must be >= 2,
got -1`). run.py's preflight runs the same check on the whole composed config (`check_settings`) before
any heavy import, so a bad value is one line and exit code 2 before a model loads.

Why not Hydra structured configs (dataclasses in the ConfigStore that the YAML options extend): OmegaConf
then type-checks at compose time, inside Hydra, whose errors are several lines (the override, the full
key, the object type, a hint) raised before run.py's code runs; it has no ranges (`pivots >= 2`); and the
values that come through `${profile:...}` and `${oc.select:...}` interpolations are only checked when
they are first read, deep inside a stage. Defaults in the ConfigStore schemas would also be a second
place for values. Here the YAML is the only place, and tests/test_settings_match_yaml.py keeps the
two in step: every key an option sets is declared, every declared field is set by every option.
"""

from treesynth.settings.check import check_settings, load, stray_keys
from treesynth.settings.schema import LLM as LLMSettings
from treesynth.settings.schema import (
    Data,
    Diversity,
    Eval,
    EvolInstructMethod,
    Hygiene,
    LLMGroup,
    MethodGroup,
    PersonaHubMethod,
    ProgressSettings,
    Settings,
    TemperatureMethod,
    Train,
    TrainGroup,
    TreeShape,
    Verify,
    Wandb,
    bound,
    one_of,
)

__all__ = ["Data", "Diversity", "Eval", "EvolInstructMethod", "Hygiene", "LLMGroup", "LLMSettings", "MethodGroup",
           "PersonaHubMethod", "ProgressSettings", "Settings", "TemperatureMethod", "Train", "TrainGroup",
           "TreeShape", "Verify", "Wandb", "bound", "check_settings", "load", "one_of",
           "stray_keys"]
