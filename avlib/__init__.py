"""avlib: the support package behind the avlib notebooks (audio-visual deepfake detection).

Data flows one way: index -> split -> decode + features -> cache -> Dataset -> model -> train
-> evaluate -> plots, and so do the imports, layer by layer (lowest first):

    core        errors, parameters, paths and files, locks, progress, device and precision, checkpoints
    dataio      indexers, splits, decoding, features, the clip cache, loaders, augmentation, synthetic corpus
    models      the detector and its sync branch
    scoring     batched prediction, the inference copy of a checkpoint, metrics
    training    the training loop           evaluation   a run's metrics, external sets, the shortcut audit
    figures     plots and the notebooks' displays
    stages      one function per notebook, and every notebook's parameters declared once
    commands    python -m avlib.pipeline | predict | train | bench (reference: pipeline --reference)
"""
__version__ = "0.1.0"
