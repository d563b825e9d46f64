"""treesynth: synthesize (TreeSynth and baselines), fine-tune, evaluate."""

# Registers the `${profile:...}` config resolver the method configs use (before any config is resolved).
import treesynth.profiles  # noqa: F401

__version__ = "0.1.0"
