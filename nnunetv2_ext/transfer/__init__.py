"""Weight transfer: read pretrained checkpoints safely and map them into a (multi-encoder) U-Net with a report."""
from nnunetv2_ext.transfer.checkpoint import NNUNET_SAFE_GLOBALS, SourceWeights, read_checkpoint, strip_prefixes
from nnunetv2_ext.transfer.transfer import (ACTIONS, NEW_MODALITY_INITS, TRANSFER_SCOPES, TransferEntry,
                                            TransferReport, canonical_keys, fresh_keys_for_scope, transfer_weights)

__all__ = ["ACTIONS", "NEW_MODALITY_INITS", "NNUNET_SAFE_GLOBALS", "SourceWeights", "TRANSFER_SCOPES", "TransferEntry",
           "TransferReport", "canonical_keys", "fresh_keys_for_scope", "read_checkpoint", "strip_prefixes",
           "transfer_weights"]
