"""The report of a transfer: what happened to each tensor (loaded / adapted / new / ignored, with shapes), printed
and saved as ``transfer_report.json`` / ``transfer_report.txt`` (STYLE habit 4; as MONAI's ``copy_model_state``
reports what it loaded and what it left).

:func:`~nnunetv2_ext.transfer.transfer.transfer_weights` builds a :class:`TransferReport`; :func:`with_source_notes`
adds what the checkpoint's reader did (its notes, permuted axes, lost input projections). Files are written through
:mod:`nnunetv2_ext.io_utils` (atomic).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nnunetv2_ext.io_utils import atomic_write_json, atomic_write_text
from nnunetv2_ext.transfer.checkpoint import SourceWeights

ACTIONS = ("loaded", "adapted", "new", "ignored")
REPORT_STEM = "transfer_report"  # the report's files: <output folder>/transfer_report.json and .txt


@dataclass
class TransferEntry:
    """What happened to one tensor.

    Attributes:
        target_key: key in the target network (None for ``ignored`` source tensors).
        action: ``loaded`` (copied unchanged), ``adapted`` (built from pretrained tensors: channels selected,
            reordered or averaged), ``new`` (the target's own fresh initialisation kept) or ``ignored`` (a source
            tensor nothing used).
        source_key, source_shape, target_shape: the tensors involved (None where there is none).
        note: why, in words.
    """

    target_key: Optional[str]
    action: str
    source_key: Optional[str]
    source_shape: Optional[tuple]
    target_shape: Optional[tuple]
    note: str = ""


def format_shape(shape: Optional[Sequence[int]]) -> str:
    """``4x2x3x3x3`` for a shape, ``scalar`` for ``()``, ``-`` for None (no tensor): the report's shape column."""
    if shape is None:
        return "-"
    return "x".join(str(s) for s in shape) if len(shape) else "scalar"


@dataclass
class TransferReport:
    """Per-tensor record of a transfer: loaded / adapted / new / ignored, with shapes (STYLE habit 4).

    Only canonical target keys are listed: ``decoder.encoder.*`` and ``*.all_modules.*`` keys are the same tensors as
    ``encoder.*`` and ``*.conv``/``*.norm`` (dynamic-network-architectures registers them twice) and follow them;
    ``n_aliases`` counts them.
    """

    entries: List[TransferEntry]
    source: str
    target: str = ""
    notes: List[str] = field(default_factory=list)
    mapping: List[str] = field(default_factory=list)
    n_aliases: int = 0

    def counts(self) -> Dict[str, int]:
        """Number of entries per action (every action present, zeros included)."""
        out = {a: 0 for a in ACTIONS}
        for e in self.entries:
            out[e.action] += 1
        return out

    def to_json(self) -> dict:
        """JSON-serialisable dict: source, target, counts, notes, encoder mapping and every entry."""
        entries = []
        for e in self.entries:
            d = asdict(e)
            d["source_shape"] = list(e.source_shape) if e.source_shape is not None else None
            d["target_shape"] = list(e.target_shape) if e.target_shape is not None else None
            entries.append(d)
        return {"source": self.source, "target": self.target, "counts": self.counts(), "notes": list(self.notes),
                "mapping": list(self.mapping), "n_aliases": self.n_aliases, "entries": entries}

    def count_line(self) -> str:
        c = self.counts()
        return (f"{c['loaded']} loaded, {c['adapted']} adapted, {c['new']} new, {c['ignored']} ignored "
                f"({len(self.entries)} entries; {self.n_aliases} alias keys follow their canonical key)")

    def table(self) -> str:
        """Fixed-width table (key, source shape, target shape, action, note), then the count line.

        For ``ignored`` rows the key column holds the source key.
        """
        header = ("key", "source shape", "target shape", "action", "note")
        rows = [(e.target_key if e.target_key is not None else e.source_key or "-", format_shape(e.source_shape),
                 format_shape(e.target_shape), e.action, e.note) for e in self.entries]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
        lines = []
        for r in [header] + rows:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 4)
        lines.append(self.count_line())
        return "\n".join(line.rstrip() for line in lines)

    def summary(self) -> str:
        """Source, target, notes and encoder mapping above :meth:`table`: what ``transfer_report.txt`` holds."""
        head = [f"source: {self.source}", f"target: {self.target}"]
        head += [f"note: {n}" for n in self.notes]
        head += [f"mapping: {m}" for m in self.mapping]
        return "\n".join(head + ["", self.table()]) + "\n"

    def save(self, folder: str | os.PathLike) -> Tuple[Path, Path]:
        """Write ``transfer_report.json`` and ``transfer_report.txt`` into ``folder`` (each atomically).

        Returns:
            (json path, txt path).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path = atomic_write_json(self.to_json(), folder / f"{REPORT_STEM}.json", overwrite=True)
        txt_path = atomic_write_text(self.summary(), folder / f"{REPORT_STEM}.txt", overwrite=True)
        return json_path, txt_path


def with_source_notes(report: TransferReport, source: SourceWeights) -> TransferReport:
    """A copy of ``report`` that also says what the reader did: its notes first, per entry whether the tensor's
    spatial axes were permuted, and a warning for every declared input projection the transfer could not use (its
    pretrained channels are lost). ``report`` itself is not modified."""
    notes = list(getattr(source, "notes", []) or [])
    permuted = set(getattr(source, "permuted_keys", []) or [])
    in_proj = {k + ".weight" for k in getattr(source, "keys_to_in_proj", ()) or ()}
    order = getattr(source, "axis_order", "nnunet")
    entries, warnings = [], []
    for e in report.entries:
        if e.source_key in permuted and e.action in ("loaded", "adapted"):
            e = replace(e, note="; ".join(x for x in (e.note, f"spatial axes permuted to {order}") if x))
        if e.source_key in in_proj and e.target_key is not None and e.action == "new":
            names = f" [{', '.join(source.modality_names)}]" if source.modality_names else ""
            warnings.append(f"WARNING: the pretrained input projection {e.source_key} "
                            f"{'x'.join(map(str, e.source_shape or ()))}{names} was NOT transferred into "
                            f"{e.target_key} {'x'.join(map(str, e.target_shape or ()))}: its pretrained channels "
                            f"are lost ({e.note})")
        entries.append(e)
    return replace(report, entries=entries, notes=notes + warnings + list(report.notes))
