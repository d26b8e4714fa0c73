"""avlib: the support package behind the avlib notebooks (audio-visual deepfake detection).

Data flows one way: index -> split -> decode + features -> cache -> Dataset -> model
-> train -> evaluate -> plots. Each stage is a module named for what it does.
"""
__version__ = "0.1.0"
