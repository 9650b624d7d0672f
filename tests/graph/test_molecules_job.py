"""molecules: SMILES files and the bundled QM9 snapshot -> graph tables, quarantine, idempotent rerun, checksums."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from datajobs.cli import main
from datajobs.molecules import build_smiles
from datajobs.store import Store
from tests.conftest import BIN, run_cli

SMILES = """mol_id,smiles
a,c1ccccc1O
b,C1=CC=CC=C1O
c,C(C(
d,[SiH4]
e,CC.O
f,CC(=O)[O-]
g,CCN
"""


def test_broken_duplicate_and_out_of_vocabulary_are_quarantined_with_reasons(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text(SMILES)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("molecules:\n  max_invalid_share: 0.9\n  val_fraction: 0.0\n  test_fraction: 0.5\n")
    root = str(tmp_path / "data")
    assert main(["run", "molecules", "--from-file", str(src), "--config", str(cfg), "--root", root]) == 0
    version = Store(root).open("molecules@latest")
    quarantine = version.read_table("quarantine.parquet")
    reasons = dict(zip(quarantine["source_id"].to_pylist(), quarantine["reason"].to_pylist(), strict=True))
    assert reasons == {"b": "duplicate smiles", "c": "unparseable SMILES", "d": "element outside the vocabulary",
                       "e": "more than one fragment"}
    mols = version.read_table("molecules.parquet")
    assert mols["smiles"].to_pylist() == ["Oc1ccccc1", "CC(=O)[O-]", "CCN"]
    assert set(mols["split"].to_pylist()) <= {"train", "test"}
    atoms, bonds = version.read_table("atoms.parquet"), version.read_table("bonds.parquet")
    # the stored graph (element, charge, kekulized bonds) rebuilds the canonical SMILES; hydrogens are implicit
    for m, smi in enumerate(mols["smiles"].to_pylist()):
        a = atoms.filter(pc.equal(atoms["mol"], m))
        b = bonds.filter(pc.equal(bonds["mol"], m))
        edges = list(zip(b["src"].to_pylist(), b["dst"].to_pylist(), b["order"].to_pylist(), strict=True))
        assert build_smiles(a["element"].to_pylist(), a["formal_charge"].to_pylist(), edges) == smi
    phenol = atoms.filter(pc.equal(atoms["mol"], 0))
    assert phenol["element"].to_pylist()[0] == "O" and phenol["num_hs"].to_pylist()[0] == 1
    assert sorted(bonds.filter(pc.equal(bonds["mol"], 0))["order"].to_pylist()) == [1, 1, 1, 1, 2, 2, 2]


def test_snapshot_rerun_is_idempotent_and_verify_catches_a_flipped_byte(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    first = run_cli([str(BIN / "astrobio-data"), "run", "molecules", "--from-snapshot", "--root", root])
    assert first.returncode == 0, first.stderr
    version = Store(root).latest("molecules")
    again = run_cli([str(BIN / "astrobio-data"), "run", "molecules", "--from-snapshot", "--root", root])
    assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr
    assert Store(root).versions("molecules") == [version]
    opened = Store(root).open("molecules@latest")
    assert opened.manifest["splits"]["train"] > 700 and opened.manifest["quarantine"]["rows"] == 0
    shard = Path(root) / "datasets" / "molecules" / version / "bonds.parquet"
    data = bytearray(shard.read_bytes())
    data[50] ^= 0xFF
    shard.write_bytes(bytes(data))
    verify = run_cli([str(BIN / "astrobio-data"), "verify", "molecules@latest", "--root", root])
    assert verify.returncode == 2
    assert "bonds.parquet fails its checksum" in verify.stderr
    assert "astrobio-data run molecules --from-snapshot" in verify.stderr
