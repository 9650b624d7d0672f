"""kegg: recorded KEGG REST responses -> RDKit molecular graphs and KGML pathway graphs."""

from __future__ import annotations

import pyarrow.compute as pc

from datajobs.cli import main
from datajobs.store import Store


def test_compounds_and_pathways(tmp_path, replay, config):
    root = str(tmp_path)
    assert main(["run", "kegg", "--root", root, "--config", str(config())]) == 0
    version = Store(root).open("kegg@latest")
    compounds = version.read_table("compounds.parquet")
    by_id = {r["compound"]: r for r in compounds.to_pylist()}
    assert by_id["C00099"]["smiles"] == "NCCC(=O)O"  # beta-alanine
    assert by_id["C00023"]["smiles"] == "[Fe]"
    quarantine = version.read_table("quarantine.parquet")
    reasons = dict(zip(quarantine["compound"].to_pylist(), quarantine["reason"].to_pylist(), strict=True))
    assert reasons["C00017"] == "generic structure"  # "Protein": R groups
    atoms, bonds = version.read_table("atoms.parquet"), version.read_table("bonds.parquet")
    ala = bonds.filter(pc.equal(bonds["compound"], "C00099"))
    assert ala.num_rows == 5 and atoms.filter(pc.equal(atoms["compound"], "C00099")).num_rows == 6
    edges = version.read_table("pathway_edges.parquet")
    assert set(edges["pathway"].to_pylist()) == {"ko00010", "ko00253"}
    assert edges.filter(pc.equal(edges["reaction"], "rn:R04060"))["substrate"].to_pylist() == ["C02811"]
    nodes = version.read_table("pathway_nodes.parquet")
    assert "C00022" in nodes.filter(pc.equal(nodes["pathway"], "ko00010"))["compound"].to_pylist()  # pyruvate
    assert replay.requests[0].path.startswith("/kegg/get/C00023+")
