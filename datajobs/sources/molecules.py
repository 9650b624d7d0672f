"""SMILES sets (QM9, MOSES, KEGG compounds) -> RDKit-validated, deduplicated molecular graphs, split by molecule."""

from __future__ import annotations

import gzip
import hashlib
import io
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import Field

from datajobs import molecules
from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import DataError
from datajobs.job import Context, Product, snapshot_path
from datajobs.store import Shard
from datajobs.validate import Check, validate

DESCRIPTION = "SMILES (QM9 snapshot, MOSES/QM9 files, KEGG compounds) -> molecular graphs (RDKit), split by molecule"
SNAPSHOT = snapshot_path("molecules_qm9", "micro_qm9_smiles.csv")
CITATIONS = {
    "qm9": "QM9: Ramakrishnan, Dral, Rupp & von Lilienfeld 2014, Sci. Data 1, 140022 (cite).",
    "moses": "MOSES: Polykovskiy et al. 2020, Front. Pharmacol. 11:565644 (MIT); molecules from ZINC15 Clean Leads.",
    "kegg": "KEGG compounds (c) Kanehisa Laboratories, see the kegg dataset's license; cite Kanehisa & Goto 2000.",
    "other": "",
}
# Quarantine reasons as parse_graph words them (prefixes), in the order the card lists them
REASONS = ("unparseable SMILES", "more than one fragment", "element outside the vocabulary", "too many heavy atoms",
           "radical electrons", "does not round-trip", "duplicate smiles")

MOLECULE_SCHEMA = pa.schema([
    ("mol", pa.int32()), ("source_id", pa.string()), ("smiles", pa.string()), ("num_atoms", pa.int16()),
    ("num_bonds", pa.int16()), ("scaffold", pa.string()), ("split", pa.string()),
])
ATOM_SCHEMA = pa.schema([("mol", pa.int32()), ("atom", pa.int16()), ("element", pa.string()),
                         ("formal_charge", pa.int8()), ("num_hs", pa.int8())])
BOND_SCHEMA = pa.schema([("mol", pa.int32()), ("src", pa.int16()), ("dst", pa.int16()), ("order", pa.int8())])


class Config(SourceConfig):
    input: Literal["qm9", "moses", "kegg", "other"] = Field(
        "qm9", description="what the SMILES are (names the card and citation); `kegg` reads the kegg dataset")
    kegg_dataset: str = Field("kegg@latest", description="kegg dataset version whose compounds to use (input=kegg)")
    smiles_column: str | None = Field(None, description="CSV column with SMILES; default `smiles` (any case)")
    id_column: str | None = Field(None, description="CSV column with ids; default mol_id when present, else row number")
    elements: list[str] = Field(default_factory=lambda: ["C", "N", "O", "F", "S", "Cl", "Br", "P", "I"], min_length=1,
                                description="allowed heavy elements; other molecules are quarantined")
    max_atoms: int = Field(38, gt=0, description="heavy atoms per molecule at most (MOSES: 27, QM9: 9)")
    limit: int | None = Field(None, gt=0, description="use only the first N input rows (a documented subset)")
    split: Literal["random", "scaffold"] = Field("random", description="by molecule, or by Bemis-Murcko scaffold")
    split_seed: int = Field(0, description="seed of the split hash")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)


def split_of(key: str, seed: int, val: float, test: float) -> str:
    """Stable split of one key (canonical SMILES, or scaffold): same key, same split for a seed."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def read_smiles(data: bytes, what: str, cfg: Config) -> tuple[list[str], list[str]]:
    """(ids, smiles) from a CSV with a header (gzip allowed) or a .smi file (SMILES, then an optional id)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    first = data.split(b"\n", 1)[0].decode(errors="replace")
    if "," in first or (cfg.smiles_column and cfg.smiles_column in first):
        try:
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in first.strip().split(",")}))
        except pa.ArrowInvalid as exc:
            raise DataError(f"{what} is not a readable CSV ({str(exc).splitlines()[0]})") from None
        names = {n.lower(): n for n in table.column_names}
        col = cfg.smiles_column or names.get("smiles")
        if col not in table.column_names:
            raise DataError(f"{what} has no SMILES column (columns: {', '.join(table.column_names)}); set "
                            f"molecules.smiles_column in --config")
        smiles = [s or "" for s in table[col].to_pylist()]
        idcol = cfg.id_column or names.get("mol_id")
        ids = table[idcol].to_pylist() if idcol in table.column_names else [f"row-{i}" for i in range(len(smiles))]
    else:
        lines = [ln.split() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        if lines and lines[0][0].lower() == "smiles":
            lines = lines[1:]
        smiles = [ln[0] for ln in lines]
        ids = [ln[1] if len(ln) > 1 else f"row-{i}" for i, ln in enumerate(lines)]
    if cfg.limit is not None:
        ids, smiles = ids[: cfg.limit], smiles[: cfg.limit]
    return [str(i) for i in ids], smiles


def kegg_smiles(ctx: Context, cfg: Config) -> tuple[list[str], list[str], dict]:
    version = ctx.store.open(cfg.kegg_dataset, "astrobio-data run kegg")
    table = version.read_table("compounds.parquet")
    source = {"kind": "dataset", "dataset": version.ref,
              "manifest_content_digest": version.manifest.get("content_digest")}
    return table["compound"].to_pylist(), table["smiles"].to_pylist(), source


def graph_tables(ids: list[str], smiles: list[str], cfg: Config) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """(all input rows with their problem, molecules, atoms, bonds); molecules are numbered in input order."""
    allowed = set(cfg.elements)
    rows, mols, atoms, bonds = [], [], [], []
    seen: set[str] = set()
    for source_id, smi in zip(ids, smiles, strict=True):
        graph = molecules.parse_graph(smi, allowed, cfg.max_atoms)
        problem = graph if isinstance(graph, str) else "duplicate smiles" if graph.smiles in seen else None
        rows.append({"source_id": source_id, "input_smiles": smi, "problem": problem})
        if problem is not None:
            continue
        assert not isinstance(graph, str)
        seen.add(graph.smiles)
        m = len(mols)
        key = graph.scaffold or graph.smiles if cfg.split == "scaffold" else graph.smiles
        mols.append({"mol": m, "source_id": source_id, "smiles": graph.smiles, "num_atoms": len(graph.elements),
                     "num_bonds": len(graph.bonds), "scaffold": graph.scaffold,
                     "split": split_of(key, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)})
        atoms += [{"mol": m, "atom": k, "element": e, "formal_charge": c, "num_hs": h}
                  for k, (e, c, h) in enumerate(zip(graph.elements, graph.charges, graph.hydrogens, strict=True))]
        bonds += [{"mol": m, "src": i, "dst": j, "order": o} for i, j, o in graph.bonds]
    inputs = pa.Table.from_pylist(rows, pa.schema([("source_id", pa.string()), ("input_smiles", pa.string()),
                                                   ("problem", pa.string())]))
    return (inputs, pa.Table.from_pylist(mols, MOLECULE_SCHEMA), pa.Table.from_pylist(atoms, ATOM_SCHEMA),
            pa.Table.from_pylist(bonds, BOND_SCHEMA))


def _flagged(prefix: str) -> Check:
    def invalid(t: pa.Table):
        import numpy as np

        return np.array([bool(p) and p.startswith(prefix) for p in t["problem"].to_pylist()], dtype=bool)

    return Check(prefix, invalid)


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if cfg.input == "kegg":
        if ctx.mode != "live":
            raise DataError("molecules input=kegg reads the kegg dataset; run it without --from-snapshot/--from-file")
        ids, smiles, source = kegg_smiles(ctx, cfg)
        source_lines = [f"dataset `{source['dataset']}` (compounds.parquet, RDKit SMILES from KEGG KCF)"]
    elif ctx.mode == "live":
        raise DataError(f"molecules input={cfg.input} has no download; use --from-snapshot (1,006 QM9 molecules) "
                        f"or --from-file SMILES.csv")
    else:
        data, source = ctx.read_offline(SNAPSHOT, "a CSV with a smiles column or a .smi file")
        ids, smiles = read_smiles(data, source["file"], cfg)
        source_lines = [f"file `{source['file']}` (sha256 {source['sha256'][:12]}…)"]
        if ctx.mode == "snapshot":
            source_lines = ["bundled snapshot `micro_qm9_smiles.csv`: 1,006 QM9 molecules from graphium 2.4.7 "
                            "`micro_qm9.csv` (Apache-2.0; see its PROVENANCE.md)"]
    source = {**source, "input": cfg.input, "limit": cfg.limit}
    inputs, mols, atoms, bonds = graph_tables(ids, smiles, cfg)
    checks = [_flagged(r) for r in REASONS]
    checked = validate(inputs, checks, max_invalid_share=cfg.max_invalid_share, what=f"molecules ({cfg.input})")
    splits = {s: mols["split"].to_pylist().count(s) for s in ("train", "val", "test")}
    shards = [
        Shard.parquet("molecules.parquet", mols),
        Shard.parquet("atoms.parquet", atoms),
        Shard.parquet("bonds.parquet", bonds),
        checked.shard(),
        card(
            f"molecules: {cfg.input} SMILES as molecular graphs",
            source=source_lines,
            rows={"input rows": inputs.num_rows, "molecules": mols.num_rows, "atoms": atoms.num_rows,
                  "bonds": bonds.num_rows, **{f"{k} molecules": v for k, v in splits.items()}},
            quarantined=checked.counts,
            columns=[
                ("molecules.smiles", "string", "canonical non-isomeric RDKit SMILES (stereo removed)"),
                ("molecules.split", "string", f"train/val/test by {cfg.split} hash, seed {cfg.split_seed}"),
                ("molecules.scaffold", "string", "Bemis-Murcko scaffold SMILES, empty when acyclic"),
                ("atoms.atom", "int16", "0-based index in decoding order: BFS from canonical rank 0"),
                ("atoms.element / formal_charge / num_hs", "", "heavy atom; hydrogens are implicit (count given)"),
                ("bonds.order", "int8", "kekulized bond order 1/2/3 (src < dst)"),
            ],
            notes=[
                f"Elements allowed: {', '.join(cfg.elements)}; at most {cfg.max_atoms} heavy atoms; one fragment; "
                "no radicals; the graph must rebuild the same canonical SMILES (element, charge, bonds only).",
                "Duplicates are by canonical SMILES: the first occurrence is kept.",
                *([f"Subset: the first {cfg.limit} input rows."] if cfg.limit else []),
            ],
            license=[c for c in (CITATIONS[cfg.input],) if c],
        ),
    ]
    return Product(shards, source, rows_fetched=inputs.num_rows, rows_quarantined=checked.rows_invalid,
                   extra={**checked.summary(), "splits": splits})
