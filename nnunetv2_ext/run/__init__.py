"""Command-line entry points that run nnU-Net's training in ways nnU-Net's own commands do not (torchrun)."""
