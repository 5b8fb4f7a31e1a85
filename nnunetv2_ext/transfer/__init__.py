"""Weight transfer: read pretrained checkpoints safely and map them into a (multi-encoder) U-Net with a report.

Modules: ``checkpoint`` (safe loading; nnU-Net checkpoints and plain state dicts), ``formats`` (the one table of
checkpoint formats and the other ecosystems' readers), ``axes`` (spatial axis orders), ``input_kernel`` (input
projections for other input channels), ``transfer`` (the transfer function), ``report`` (its report),
``inspect_cli`` (``nnunetv2_ext weights inspect``).
"""
from nnunetv2_ext.transfer.checkpoint import (
                                              NNUNET_SAFE_GLOBALS,
                                              ExternalWeights,
                                              SourceWeights,
                                              read_checkpoint,
                                              strip_prefixes,
)
from nnunetv2_ext.transfer.formats import CHECKPOINT_FORMATS, FORMATS, detect_format, read_weights
from nnunetv2_ext.transfer.input_kernel import NEW_MODALITY_INITS
from nnunetv2_ext.transfer.report import ACTIONS, TransferEntry, TransferReport, with_source_notes
from nnunetv2_ext.transfer.transfer import TRANSFER_SCOPES, canonical_keys, fresh_keys_for_scope, transfer_weights

__all__ = ["ACTIONS", "CHECKPOINT_FORMATS", "ExternalWeights", "FORMATS", "NEW_MODALITY_INITS", "NNUNET_SAFE_GLOBALS",
           "SourceWeights", "TRANSFER_SCOPES", "TransferEntry", "TransferReport", "canonical_keys", "detect_format",
           "fresh_keys_for_scope", "read_checkpoint", "read_weights", "strip_prefixes", "transfer_weights",
           "with_source_notes"]
