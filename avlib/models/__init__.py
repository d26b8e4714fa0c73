"""The detector (video and audio encoders, fusion, classifier) and its lip-voice sync branch."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "DeepfakeDetector": "detector", "build_model": "detector", "inference_model": "detector",
    "SyncBranch": "sync", "sync_loss": "sync",
})
