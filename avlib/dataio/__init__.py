"""From raw videos to clips a model reads: index a dataset, split it by identity, decode and
compute features, cache, and load (Dataset, DataLoader, augmentation); also the synthetic
corpus generator."""
from avlib.core.exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "index_dataset": "indexers", "assign_splits": "splits", "decode_clip": "decode", "compute_mfcc": "features",
    "read_index": "cache", "read_manifest": "cache", "preprocess": "preprocess",
    "CachedClips": "loader", "make_loader": "loader", "CorpusSpec": "synthetic", "generate_corpus": "synthetic",
})
