"""The molecules and metabolic jobs read the kegg dataset the kegg job published (input: kegg), from the same root."""

from __future__ import annotations

import json

from datajobs.cli import main
from datajobs.store import Store


def test_molecules_and_metabolic_read_the_published_kegg_dataset(tmp_path, replay, config):
    root = str(tmp_path)
    assert main(["run", "kegg", "--root", root, "--config", str(config())]) == 0
    kegg = Store(root).open("kegg@latest")
    compounds = kegg.read_table("compounds.parquet")["compound"].to_pylist()
    cfg = config(molecules={"input": "kegg", "max_invalid_share": 0.9}, metabolic={"input": "kegg"})
    assert main(["run", "molecules", "--root", root, "--config", str(cfg)]) == 0
    assert main(["run", "metabolic", "--root", root, "--config", str(cfg)]) == 0

    mols = Store(root).open("molecules@latest")
    table = mols.read_table("molecules.parquet")
    quarantine = mols.read_table("quarantine.parquet")
    reasons = dict(zip(quarantine["source_id"].to_pylist(), quarantine["reason"].to_pylist(), strict=True))
    assert reasons == {"C00023": "element outside the vocabulary", "C00348": "too many heavy atoms"}
    assert sorted(table["source_id"].to_pylist() + list(reasons)) == sorted(compounds)  # every compound accounted
    smiles = dict(zip(table["source_id"].to_pylist(), table["smiles"].to_pylist(), strict=True))
    assert smiles["C00099"] == "NCCC(=O)O"  # beta-alanine, as the kegg job parsed its MOL file
    assert kegg.ref in json.dumps(mols.manifest)  # the lineage names the kegg version read

    networks = Store(root).open("metabolic@latest")
    assert set(networks.read_table("networks.parquet")["network"].to_pylist()) == {"ko00010", "ko00253"}
    assert networks.manifest["networks"]["ko00010"] == {"edges": 111, "metabolites": 31, "reactions": 53}
    nodes = networks.read_table("nodes.parquet").to_pylist()
    assert any(n["network"] == "ko00010" and n["id"].endswith("C00022") for n in nodes)  # pyruvate
    assert kegg.ref in json.dumps(networks.manifest)


def test_input_kegg_without_a_kegg_dataset_stops_naming_the_command(tmp_path, replay, config, capsys):
    cfg = config(molecules={"input": "kegg"})
    assert main(["run", "molecules", "--root", str(tmp_path), "--config", str(cfg)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("astrobio-data run kegg" in line for line in err), err
