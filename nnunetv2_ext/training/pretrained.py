"""Route nnU-Net's ``-pretrained_weights`` to this package's weight transfer, for this package's trainers only.

``nnUNetv2_train ... -pretrained_weights FILE`` calls ``nnunetv2.run.run_training.load_pretrained_weights(network,
FILE)``, which requires every tensor to match by name and shape (so 2 -> 4 modalities fails). When one of this
package's trainers is constructed, ``install_hook`` wraps that module-level function once per process: for a network
built by one of our trainers it calls the trainer's ``load_pretrained_weights`` (the transfer with a report); for any
other network it calls nnU-Net's original function unchanged, so nnU-Net's own trainers behave exactly as before.
Each DDP worker constructs its trainer before loading weights, so the hook is installed there too.
"""
from __future__ import annotations

import weakref

_OWNERS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def register(network, trainer) -> None:
    """Mark ``network`` (as handed to nnU-Net's loader: maybe DDP-wrapped) as built by ``trainer``."""
    _OWNERS[id(network)] = trainer


def install_hook() -> None:
    import nnunetv2.run.run_training as run_training

    original = run_training.load_pretrained_weights
    if getattr(original, "_nnunetv2_ext_hook", False):
        return

    def load_pretrained_weights(network, fname, verbose=False):
        trainer = _OWNERS.get(id(network))
        if trainer is None:
            return original(network, fname, verbose=verbose)
        return trainer.load_pretrained_weights(fname)

    load_pretrained_weights._nnunetv2_ext_hook = True
    load_pretrained_weights.__wrapped__ = original
    run_training.load_pretrained_weights = load_pretrained_weights
