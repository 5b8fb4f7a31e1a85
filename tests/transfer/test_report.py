"""TransferReport (counts, table, JSON, saved files) and with_source_notes (what the reader did, in the report)."""
from __future__ import annotations

import json

from nnunetv2_ext.transfer import transfer_weights
from nnunetv2_ext.transfer.checkpoint import ExternalWeights
from nnunetv2_ext.transfer.report import ACTIONS, TransferEntry, TransferReport, format_shape, with_source_notes
from tests.transfer.test_transfer import FIRST, NAMES4, canonical, multi


def test_counts_table_and_json_of_hand_built_entries():
    report = TransferReport(entries=[TransferEntry("a.weight", "loaded", "a.weight", (4, 2, 3, 3, 3), (4, 2, 3, 3, 3)),
                                     TransferEntry("b", "new", None, None, (), "not in the source"),
                                     TransferEntry(None, "ignored", "c", (5,), None, "not used")],
                            source="src", target="Net", notes=["n1"], n_aliases=2)
    assert report.counts() == {"loaded": 1, "adapted": 0, "new": 1, "ignored": 1} and tuple(report.counts()) == ACTIONS
    assert report.count_line() == "1 loaded, 0 adapted, 1 new, 1 ignored (3 entries; 2 alias keys follow their " \
                                  "canonical key)"
    rows = report.table().splitlines()
    assert rows[2].split() == ["a.weight", "4x2x3x3x3", "4x2x3x3x3", "loaded"]
    assert rows[3].split()[:4] == ["b", "-", "scalar", "new"] and rows[4].split()[:4] == ["c", "5", "-", "ignored"]
    data = report.to_json()
    assert data["entries"][0]["source_shape"] == [4, 2, 3, 3, 3] and data["entries"][1]["source_shape"] is None
    assert json.loads(json.dumps(data)) == data
    assert report.summary().startswith("source: src\ntarget: Net\nnote: n1\n")
    assert (format_shape(None), format_shape(()), format_shape((2, 3))) == ("-", "scalar", "2x3")


def test_report_save(tmp_path, plain_source):
    src, _ = plain_source
    target = multi(NAMES4)
    _, report = transfer_weights(src, target)
    json_path, txt_path = report.save(tmp_path / "out")
    assert json_path.name == "transfer_report.json" and txt_path.name == "transfer_report.txt"
    data = json.loads(json_path.read_text())
    assert data["counts"] == report.counts()
    assert len(data["entries"]) == len(report.entries)
    text = txt_path.read_text()
    assert "adapted" in text and "segmentation head: not transferred" in text
    table = report.table()
    assert table.splitlines()[0].split()[:2] == ["key", "source"]
    assert f"encoder.encoders.1.{FIRST}" in table and "decoder.encoder." not in table
    n_keys = len(canonical(target.state_dict()))
    assert sum(report.counts().values()) == n_keys + report.counts()["ignored"]
    assert not list((tmp_path / "out").glob("*.partial"))


def test_report_warns_when_a_pretrained_input_projection_is_lost():
    """with_source_notes flags an input projection the transfer left 'new': its pretrained channels are lost."""
    key = "net.swinViT.patch_embed.proj.weight"
    lost = TransferEntry(key, "new", key, (12, 2, 2, 2, 2), (12, 4, 2, 2, 2), "shape differs")
    report = TransferReport(entries=[lost, TransferEntry("net.b", "loaded", "net.b", (3,), (3,))], source="s")
    w = ExternalWeights(state={}, modality_names=["T1", "FLAIR"], notes=["format x"],
                        keys_to_in_proj=("net.swinViT.patch_embed.proj",), permuted_keys=["net.b"])
    noted = with_source_notes(report, w)
    assert noted.notes[0] == "format x"
    assert any(n.startswith("WARNING") and "12x2x2x2x2 [T1, FLAIR]" in n and "lost" in n for n in noted.notes)
    assert noted.entries[1].note == "spatial axes permuted to nnunet" and report.entries[1].note == ""
    assert report.notes == []
