"""Route nnU-Net's ``-pretrained_weights`` to this package's weight transfer, for this package's trainers only.

``nnUNetv2_train ... -pretrained_weights FILE`` calls ``nnunetv2.run.run_training.load_pretrained_weights(network,
FILE)``, which requires every tensor to match by name and shape (so 2 -> 4 modalities fails). When one of this
package's trainers is constructed, ``install_hook`` wraps that module-level function once per process: for a network
built by one of our trainers it calls the trainer's ``load_pretrained_weights`` (the transfer with a report); for any
other network it calls nnU-Net's original function unchanged, so nnU-Net's own trainers behave exactly as before.
Each DDP worker constructs its trainer before loading weights, so the hook is installed there too.

A file the transfer refuses (not a PyTorch checkpoint, an unknown format, nothing matching) ends the run as the
``nnunetv2_ext`` command ends on bad input: the message on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

import sys
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
        try:
            return trainer.load_pretrained_weights(fname)
        except (ValueError, FileNotFoundError) as e:
            print(f"nnUNetv2_train: error: -pretrained_weights {fname}: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from e

    load_pretrained_weights._nnunetv2_ext_hook = True
    load_pretrained_weights.__wrapped__ = original
    run_training.load_pretrained_weights = load_pretrained_weights
