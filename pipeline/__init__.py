"""mnist-pipeline: the two-layer network of "Deep Learning from Scratch", chapter 4,
as a Luigi batch pipeline with HDF5 checkpoints and per-epoch accuracy reports."""

__version__ = "0.2.0"
