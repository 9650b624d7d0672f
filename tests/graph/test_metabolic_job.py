"""metabolic: the bundled BiGG snapshot and KGML/SBML files -> bipartite node/edge tables, quarantine, checksums."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from datajobs.cli import main
from datajobs.sources.metabolic import SNAPSHOT_DIR
from datajobs.store import Store
from tests.conftest import REPO, require_module

KGML = REPO / "tests" / "fixtures" / "kegg" / "ko00010.xml"


def core_only(tmp_path: Path) -> Path:
    cfg = tmp_path / "metabolic.yaml"
    cfg.write_text("metabolic:\n  models: [e_coli_core.xml]\n")
    return cfg


def test_snapshot_counts_match_the_sbml_model_rerun_is_idempotent_and_verify_catches_a_flipped_byte(
        tmp_path: Path, capsys) -> None:
    require_module("libsbml", "the metabolic extra")
    root, cfg = str(tmp_path / "data"), core_only(tmp_path)
    assert main(["run", "metabolic", "--from-snapshot", "--config", str(cfg), "--root", root]) == 0
    version = Store(root).open("metabolic@latest")
    nets = version.read_table("networks.parquet").to_pylist()
    assert [(n["network"], n["metabolites"], n["reactions"]) for n in nets] == [("e_coli_core", 72, 95)]
    nodes, edges = version.read_table("nodes.parquet"), version.read_table("edges.parquet")
    assert nodes.num_rows == 72 + 95 and edges.num_rows == nets[0]["edges"] == 360
    types = nodes["type"].to_pylist()
    assert types == ["metabolite"] * 72 + ["reaction"] * 95  # metabolites first, then reactions
    assert max(edges["metabolite"].to_pylist()) < 72 <= min(edges["reaction"].to_pylist())
    pfk = nodes.filter(pc.equal(nodes["id"], "R_PFK")).to_pylist()[0]
    assert pfk["reversible"] is False and pfk["compartment"] == "c" and pfk["boundary"] is False
    pfk_edges = edges.filter(pc.equal(edges["reaction"], pfk["node"]))
    ids = nodes["id"].to_pylist()
    roles = {ids[m]: r for m, r in zip(pfk_edges["metabolite"].to_pylist(), pfk_edges["role"].to_pylist(), strict=True)}
    assert roles == {"M_atp_c": "substrate", "M_f6p_c": "substrate", "M_adp_c": "product", "M_fdp_c": "product",
                     "M_h_c": "product"}
    assert version.manifest["quarantine"]["rows"] == 0
    assert main(["run", "metabolic", "--from-snapshot", "--config", str(cfg), "--root", root]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert len(Store(root).versions("metabolic")) == 1
    shard = Path(root) / "datasets" / "metabolic" / version.version / "edges.parquet"
    data = bytearray(shard.read_bytes())
    data[60] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", "metabolic@latest", "--root", root]) == 2
    err = capsys.readouterr().err
    assert "edges.parquet fails its checksum" in err and "astrobio-data run metabolic --from-snapshot" in err


def test_a_broken_sbml_file_is_refused_with_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    require_module("libsbml", "the metabolic extra")
    broken = tmp_path / "broken.xml"
    broken.write_text((SNAPSHOT_DIR / "e_coli_core.xml").read_text()[:20000])  # truncated mid-file
    assert main(["run", "metabolic", "--from-file", str(broken), "--root", str(tmp_path / "data")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]  # not the JSON log
    assert len(err) == 1 and err[0].startswith(f"error: {broken} is not a readable SBML model (")
    assert not (tmp_path / "data" / "datasets" / "metabolic").exists()


def test_a_reaction_with_an_undeclared_species_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    require_module("libsbml", "the metabolic extra")
    text = (SNAPSHOT_DIR / "e_coli_core.xml").read_text()
    start = text.index('id="R_PFK" metaid="R_PFK"')
    end = text.index("</reaction>", start)
    model = tmp_path / "core.xml"
    model.write_text(text[:start] + text[start:end].replace('species="M_f6p_c"', 'species="M_nope_c"') + text[end:])
    root = str(tmp_path / "data")
    assert main(["run", "metabolic", "--from-file", str(model), "--root", root]) == 0
    version = Store(root).open("metabolic@latest")
    quarantine = version.read_table("quarantine.parquet").to_pylist()
    assert [(q["reaction"], q["reason"]) for q in quarantine] == [("R_PFK", "unknown species")]
    nodes = version.read_table("nodes.parquet")
    assert "R_PFK" not in nodes["id"].to_pylist()
    assert version.read_table("networks.parquet").to_pylist()[0]["reactions"] == 94


def test_a_kgml_pathway_file_becomes_a_bipartite_network(tmp_path: Path) -> None:
    require_module("Bio", "the science extra")
    from Bio.KEGG.KGML import KGML_parser

    root = str(tmp_path / "data")
    assert main(["run", "metabolic", "--from-file", str(KGML), "--root", root]) == 0
    version = Store(root).open("metabolic@latest")
    net = version.read_table("networks.parquet").to_pylist()[0]
    pathway = KGML_parser.read(KGML.open())
    reactions = {r.name for r in pathway.reactions if r.substrates and r.products}
    compounds = {c.name.removeprefix("cpd:") for r in pathway.reactions if r.substrates and r.products
                 for c in (*r.substrates, *r.products)}
    assert (net["network"], net["kind"], net["reactions"], net["metabolites"]) == (
        "ko00010", "kgml", len(reactions), len(compounds))
    edges = version.read_table("edges.parquet")
    assert edges["stoichiometry"].null_count == edges.num_rows  # KGML gives no stoichiometry
    assert "KEGG data (c) Kanehisa Laboratories" in version.read_bytes("CARD.md").decode()
