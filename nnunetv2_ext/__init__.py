"""nnU-Net v2 plugin: multi-encoder U-Net, self-supervised pretraining and weight transfer."""
__version__ = "0.1.0"
