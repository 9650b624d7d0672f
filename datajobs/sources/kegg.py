"""KEGG REST: compounds (`/get`, KCF structures) -> molecular graphs via RDKit; pathways (`/get/<id>/kgml`)
-> compound/reaction graphs. Node and edge lists as parquet."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from pydantic import Field

from datajobs import molecules
from datajobs.card import card
from datajobs.config import HttpSettings, SourceConfig
from datajobs.errors import DataError, require
from datajobs.job import Context, Product
from datajobs.store import Shard, sha256_bytes
from datajobs.validate import Check, required, unique, validate

DESCRIPTION = "KEGG compounds as molecular graphs (RDKit) and pathways as compound/reaction graphs (KGML)"
SNAPSHOT = None  # KEGG's terms allow no redistribution: no bundled data, live or --from-file only
KEGG_REST = "https://rest.kegg.jp"
TERMS = (
    "KEGG data (c) Kanehisa Laboratories; academic use of the KEGG REST API is free, bulk download and "
    "redistribution need a license (https://www.kegg.jp/kegg/legal.html). Cite Kanehisa & Goto 2000 (NAR 28:27)."
)
BATCH = 10  # KEGG's /get accepts at most 10 entries per request


class Config(SourceConfig):
    # KEGG asks for a low request rate; one request per second with a clear User-Agent
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(requests_per_second=1.0))
    # generic compounds (R groups) are common in KEGG: they are quarantined, not errors
    max_invalid_share: float = Field(0.5, ge=0, le=1)
    kegg_url: str = Field(KEGG_REST, description="KEGG REST base URL")
    compounds: list[str] = Field(
        default_factory=lambda: [
            "C00001",
            "C00011",
            "C00014",
            "C00022",
            "C00025",
            "C00031",
            "C00037",
            "C00041",
            "C00067",
            "C01326",
        ],
        min_length=1,
        description="compound ids (water, CO2, NH3, pyruvate, glutamate, glucose, glycine, alanine, formaldehyde, HCN)",
    )
    pathways: list[str] = Field(
        default_factory=lambda: ["ko00010", "ko00680", "ko00910"],
        description="pathway ids with KGML (glycolysis, methane, nitrogen metabolism)",
    )


def fetch(ctx: Context, cfg: Config) -> tuple[str, dict[str, bytes], dict]:
    """Compound flat text and KGML per pathway, through the shared client (10 compounds per request)."""
    flat = []
    for i in range(0, len(cfg.compounds), BATCH):
        flat.append(ctx.http.get(f"{cfg.kegg_url}/get/{'+'.join(cfg.compounds[i : i + BATCH])}").content.decode())
    kgml = {p: ctx.http.get(f"{cfg.kegg_url}/get/{p}/kgml").content for p in cfg.pathways}
    digest = sha256_bytes("".join(flat).encode() + b"".join(kgml[p] for p in cfg.pathways))
    source = {
        "kind": "kegg-rest",
        "url": cfg.kegg_url,
        "compounds": cfg.compounds,
        "pathways": cfg.pathways,
        "sha256": digest,
    }
    return "\n".join(flat), kgml, source


def compound_tables(flat: str) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(compounds, atoms, bonds): one row per compound (with its RDKit SMILES or the reason there is none)."""
    rows, atoms, bonds = [], [], []
    for fields in molecules.parse_flat(flat):
        entry = fields["ENTRY"][0].split()[0]
        s = molecules.structure(fields)
        smiles = problem = None
        if s is None:
            problem = "no structure (no ATOM/BOND section)"
        elif s.generic:
            problem = "generic structure (R groups)"
        else:
            try:
                smiles = molecules.to_smiles(s)
            except ValueError as exc:
                problem = f"RDKit rejects the structure: {exc}"
        rows.append(
            {
                "compound": entry,
                "name": (fields.get("NAME") or [""])[0].rstrip(";") or None,
                "formula": (fields.get("FORMULA") or [None])[0],
                "exact_mass": float(fields["EXACT_MASS"][0]) if "EXACT_MASS" in fields else None,
                "mol_weight": float(fields["MOL_WEIGHT"][0]) if "MOL_WEIGHT" in fields else None,
                "smiles": smiles,
                "num_atoms": len(s.atoms) if s else None,
                "num_bonds": len(s.bonds) if s else None,
                "problem": problem,
            }
        )
        if smiles is not None:
            assert s is not None
            atoms += [
                {"compound": entry, "atom": k, "element": e, "kegg_type": t, "x": x, "y": y}
                for k, (e, t, x, y) in enumerate(s.atoms)
            ]
            bonds += [{"compound": entry, "src": i, "dst": j, "order": o} for i, j, o in s.bonds]
    atom_schema = pa.schema(
        [
            ("compound", pa.string()),
            ("atom", pa.int32()),
            ("element", pa.string()),
            ("kegg_type", pa.string()),
            ("x", pa.float64()),
            ("y", pa.float64()),
        ]
    )
    bond_schema = pa.schema([("compound", pa.string()), ("src", pa.int32()), ("dst", pa.int32()), ("order", pa.int8())])
    compound_schema = pa.schema(
        [
            ("compound", pa.string()),
            ("name", pa.string()),
            ("formula", pa.string()),
            ("exact_mass", pa.float64()),
            ("mol_weight", pa.float64()),
            ("smiles", pa.string()),
            ("num_atoms", pa.int32()),
            ("num_bonds", pa.int32()),
            ("problem", pa.string()),
        ]
    )
    return (
        pa.Table.from_pylist(rows, compound_schema),
        pa.Table.from_pylist(atoms, atom_schema),
        pa.Table.from_pylist(bonds, bond_schema),
    )


def pathway_tables(kgml: dict[str, bytes]) -> tuple[pa.Table, pa.Table]:
    """(nodes, edges): compound entries of each pathway, and substrate -> product edges of its reactions."""
    parser = require("Bio.KEGG.KGML.KGML_parser", "science")
    nodes, edges = [], []
    for pid, body in kgml.items():
        try:
            pathway = parser.read(io.StringIO(body.decode()))
        except Exception as exc:  # Biopython raises ParseError, ValueError, ... on a bad body
            raise DataError(f"KGML of {pid} does not parse ({str(exc).splitlines()[0]})") from None
        for entry in pathway.entries.values():
            if entry.type == "compound":
                for cpd in entry.name.split():
                    nodes.append({"pathway": pid, "entry": entry.id, "compound": cpd.removeprefix("cpd:")})
        for reaction in pathway.reactions:
            for sub in reaction.substrates:
                for prod in reaction.products:
                    edges.append(
                        {
                            "pathway": pid,
                            "reaction": reaction.name,
                            "substrate": sub.name.removeprefix("cpd:"),
                            "product": prod.name.removeprefix("cpd:"),
                            "reversible": reaction.type == "reversible",
                        }
                    )
    node_schema = pa.schema([("pathway", pa.string()), ("entry", pa.int32()), ("compound", pa.string())])
    edge_schema = pa.schema(
        [
            ("pathway", pa.string()),
            ("reaction", pa.string()),
            ("substrate", pa.string()),
            ("product", pa.string()),
            ("reversible", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(nodes, node_schema), pa.Table.from_pylist(edges, edge_schema)


def _flagged(reason_prefix: str) -> Check:
    def invalid(t: pa.Table) -> np.ndarray:
        return np.array([bool(p) and p.startswith(reason_prefix) for p in t["problem"].to_pylist()])

    return Check(reason_prefix, invalid)


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode != "live":
        raise DataError("kegg has no offline import (KEGG's terms forbid redistribution); run it live")
    flat, kgml, source = fetch(ctx, cfg)
    compounds, atoms, bonds = compound_tables(flat)
    if compounds.num_rows == 0:
        raise DataError(f"KEGG returned no compound entries for {', '.join(cfg.compounds)}; check the ids")
    checks = [
        required("compound"),
        unique("compound"),
        _flagged("no structure"),
        _flagged("generic structure"),
        _flagged("RDKit rejects"),
    ]
    checked = validate(compounds, checks, max_invalid_share=cfg.max_invalid_share, what="KEGG compounds")
    nodes, edges = pathway_tables(kgml)
    valid = checked.valid.drop_columns(["problem"])
    shards = [
        Shard.parquet("compounds.parquet", valid),
        Shard.parquet("atoms.parquet", atoms),
        Shard.parquet("bonds.parquet", bonds),
        Shard.parquet("pathway_nodes.parquet", nodes),
        Shard.parquet("pathway_edges.parquet", edges),
        checked.shard(),
        card(
            "kegg: KEGG compounds and pathways",
            source=[
                f"KEGG REST `{cfg.kegg_url}`: `/get/<ids>` for {len(cfg.compounds)} compounds, "
                f"`/get/<id>/kgml` for {', '.join(cfg.pathways) or 'no pathways'}"
            ],
            rows={
                "compounds fetched": compounds.num_rows,
                "compounds with a molecule": valid.num_rows,
                "atoms": atoms.num_rows,
                "bonds": bonds.num_rows,
                "pathway compound nodes": nodes.num_rows,
                "pathway reaction edges": edges.num_rows,
            },
            quarantined=checked.counts,
            notes=[
                "Molecules are built from KEGG's KCF graph (ATOM/BOND sections): RDKit sanitizes them and "
                "gives the canonical SMILES; atoms/bonds.parquet are their node/edge lists (0-based indices). "
                "Stereochemistry (KCF wedge marks) is not kept.",
                "Pathway edges: one per (substrate, product) pair of each KGML reaction.",
            ],
            license=[TERMS],
        ),
    ]
    return Product(
        shards,
        source,
        rows_fetched=compounds.num_rows,
        rows_quarantined=checked.rows_invalid,
        extra=checked.summary(),
    )
