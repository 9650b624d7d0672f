"""Metabolic networks (BiGG SBML models, KEGG KGML pathways) -> metabolite-reaction bipartite node/edge tables."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import DataError, require
from datajobs.job import Context, Product, snapshot_path
from datajobs.sources.kegg import TERMS as KEGG_TERMS
from datajobs.sources.kegg import pathway_tables
from datajobs.store import Shard, sha256_bytes
from datajobs.validate import Check, validate

DESCRIPTION = "metabolic networks (BiGG SBML models, KEGG KGML pathways) as metabolite-reaction bipartite graphs"
SNAPSHOT_DIR = snapshot_path("metabolic_bigg")
SNAPSHOT = SNAPSHOT_DIR / "PROVENANCE.md"  # the runner's "has a snapshot" marker; the models sit beside it
BIGG_CITATION = ("BiGG Models: King et al. 2016, Nucleic Acids Res. 44:D515 (cite, with each model's publication); "
                 "models distributed freely for research by the BiGG database (UCSD SBRG); cobrapy test files are "
                 "LGPL-2.0+/GPL-2.0.")
# Reaction problems as worded in the quarantine, in the order the card lists them
REASONS = ("no participants", "unknown species", "duplicate reaction id")

NETWORK_SCHEMA = pa.schema([
    ("network", pa.string()), ("kind", pa.string()), ("title", pa.string()), ("file", pa.string()),
    ("sha256", pa.string()), ("metabolites", pa.int32()), ("reactions", pa.int32()), ("edges", pa.int32()),
    ("sbml_errors", pa.int32()),
])
NODE_SCHEMA = pa.schema([
    ("network", pa.string()), ("node", pa.int32()), ("id", pa.string()), ("name", pa.string()),
    ("type", pa.string()), ("compartment", pa.string()), ("reversible", pa.bool_()), ("boundary", pa.bool_()),
])
EDGE_SCHEMA = pa.schema([
    ("network", pa.string()), ("metabolite", pa.int32()), ("reaction", pa.int32()), ("role", pa.string()),
    ("stoichiometry", pa.float64()),
])
REACTION_SCHEMA = pa.schema([("network", pa.string()), ("reaction", pa.string()), ("name", pa.string()),
                             ("problem", pa.string())])


class Config(SourceConfig):
    input: Literal["sbml", "kegg"] = Field(
        "sbml", description="SBML models (--from-snapshot or --from-file) or the kegg dataset's KGML pathways (live)")
    models: list[str] = Field(
        default_factory=lambda: ["e_coli_core.xml", "iJO1366.xml.gz", "salmonella.xml.gz"], min_length=1,
        description="bundled snapshot files to import (--from-snapshot)")
    kegg_dataset: str = Field("kegg@latest", description="kegg dataset version whose pathways to use (input=kegg)")


@dataclass
class Network:
    """One metabolic network as a bipartite graph: metabolites are nodes 0..M-1, reactions M..M+R-1."""

    name: str
    kind: str
    title: str
    file: str
    sha256: str
    metabolites: list[dict[str, Any]] = field(default_factory=list)  # id, name, compartment
    reactions: list[dict[str, Any]] = field(default_factory=list)  # id, name, reversible, {metabolite: coeff}
    problems: list[dict[str, Any]] = field(default_factory=list)  # reaction rows for the quarantine check
    sbml_errors: int = 0


def _text(data: bytes, what: str) -> str:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{what} is not a readable gzip file ({exc})") from None
    return data.decode("utf-8", errors="replace")


def read_sbml(text: str, file: str, sha: str) -> Network:
    """An SBML model as a Network; a file that is not SBML (no model, XML errors) is a DataError."""
    libsbml = require("libsbml", "metabolic")
    doc = libsbml.readSBMLFromString(text)
    errors = [doc.getError(i) for i in range(doc.getNumErrors())]
    serious = [e for e in errors if e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    # XML-level errors (ids below 10000) and fatal ones leave no trustworthy model; SBML validation errors such as
    # an unparseable fbc:chemicalFormula do not touch the graph and are counted only
    broken = [e for e in serious if e.getSeverity() == libsbml.LIBSBML_SEV_FATAL or e.getErrorId() < 10000]
    model = doc.getModel()
    if model is None or broken:
        why = broken[0].getMessage().strip().splitlines()[0] if broken else "no <model> element"
        raise DataError(f"{file} is not a readable SBML model ({why}); pass an SBML file with --from-file PATH")
    net = Network(model.getId() or Path(file).name.split(".")[0], "sbml", model.getName() or "", file, sha,
                  sbml_errors=len(serious))
    species = {}
    for i in range(model.getNumSpecies()):
        s = model.getSpecies(i)
        species[s.getId()] = len(net.metabolites)
        net.metabolites.append({"id": s.getId(), "name": s.getName(), "compartment": s.getCompartment()})
    seen: set[str] = set()
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        coeffs: dict[int, float] = {}
        unknown = []
        for refs, sign in ((r.getListOfReactants(), -1.0), (r.getListOfProducts(), 1.0)):
            for ref in refs:
                if ref.getSpecies() not in species:
                    unknown.append(ref.getSpecies())
                    continue
                k = species[ref.getSpecies()]
                coeffs[k] = coeffs.get(k, 0.0) + sign * ref.getStoichiometry()
        problem = (f"unknown species {unknown[0]}" if unknown else "duplicate reaction id" if r.getId() in seen
                   else "no participants" if not coeffs else None)
        seen.add(r.getId())
        net.problems.append({"network": net.name, "reaction": r.getId(), "name": r.getName(), "problem": problem})
        if problem is None:
            net.reactions.append({"id": r.getId(), "name": r.getName(), "reversible": bool(r.getReversible()),
                                  "coeffs": coeffs})
    return net


def kgml_networks(edges: pa.Table, files: dict[str, tuple[str, str]]) -> list[Network]:
    """KGML pathway edges (the kegg job's pathway_edges table) as bipartite networks, one per pathway."""
    out = []
    rows = edges.to_pylist()
    for pid in dict.fromkeys(r["pathway"] for r in rows):
        file, sha = files[pid]
        net = Network(pid, "kgml", "", file, sha)
        index: dict[str, int] = {}
        reactions: dict[str, dict[str, Any]] = {}
        for r in (r for r in rows if r["pathway"] == pid):
            rx = reactions.setdefault(r["reaction"], {"id": r["reaction"], "name": "", "reversible": r["reversible"],
                                                      "coeffs": {}})
            for cpd, role in ((r["substrate"], -1.0), (r["product"], 1.0)):
                if cpd not in index:
                    index[cpd] = len(net.metabolites)
                    net.metabolites.append({"id": cpd, "name": "", "compartment": ""})
                rx["coeffs"][index[cpd]] = role  # KGML has no stoichiometry: the sign says substrate or product
        net.reactions = list(reactions.values())
        net.problems = [{"network": pid, "reaction": r["id"], "name": "", "problem": None} for r in net.reactions]
        out.append(net)
    return out


def read_network_file(path: Path, label: str) -> list[Network]:
    """An SBML model or a KGML pathway file (gzip allowed), told apart by its root element."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; pass an SBML or KGML file with --from-file") from None
    sha = sha256_bytes(raw)
    text = _text(raw, label)
    head = text[:2000]
    if "<pathway" in head and "<sbml" not in head:
        pid = path.name.split(".")[0]
        _, edges = pathway_tables({pid: text.encode()})  # compound entries without a reaction carry no edge
        if edges.num_rows == 0:
            raise DataError(f"{label}: KGML pathway {pid} has no reactions with substrates and products")
        return kgml_networks(edges, {pid: (label, sha)})
    return [read_sbml(text, label, sha)]


def tables(networks: list[Network]) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """(networks, nodes, edges, reaction rows with their problem)."""
    nets, nodes, edges, problems = [], [], [], []
    for net in networks:
        m = len(net.metabolites)
        n_edges = 0
        for k, met in enumerate(net.metabolites):
            nodes.append({"network": net.name, "node": k, "id": met["id"], "name": met["name"], "type": "metabolite",
                          "compartment": met["compartment"], "reversible": None, "boundary": None})
        for j, rx in enumerate(net.reactions):
            coeffs = rx["coeffs"]
            signs = {np.sign(c) for c in coeffs.values()}
            comps = sorted({net.metabolites[k]["compartment"] for k in coeffs} - {""})
            nodes.append({"network": net.name, "node": m + j, "id": rx["id"], "name": rx["name"], "type": "reaction",
                          "compartment": ",".join(comps), "reversible": rx["reversible"],
                          "boundary": not ({-1.0, 1.0} <= signs)})
            for k, c in sorted(coeffs.items()):
                role = "substrate" if c < 0 else "product" if c > 0 else "both"
                edges.append({"network": net.name, "metabolite": k, "reaction": m + j, "role": role,
                              "stoichiometry": abs(c) if net.kind == "sbml" else None})
                n_edges += 1
        problems += net.problems
        nets.append({"network": net.name, "kind": net.kind, "title": net.title, "file": net.file,
                     "sha256": net.sha256, "metabolites": m, "reactions": len(net.reactions), "edges": n_edges,
                     "sbml_errors": net.sbml_errors})
    return (pa.Table.from_pylist(nets, NETWORK_SCHEMA), pa.Table.from_pylist(nodes, NODE_SCHEMA),
            pa.Table.from_pylist(edges, EDGE_SCHEMA), pa.Table.from_pylist(problems, REACTION_SCHEMA))


def _problem(prefix: str) -> Check:
    def invalid(t: pa.Table) -> np.ndarray:
        return np.array([bool(p) and p.startswith(prefix) for p in t["problem"].to_pylist()], dtype=bool)

    return Check(prefix, invalid)


def load(ctx: Context, cfg: Config) -> tuple[list[Network], dict[str, Any], list[str], list[str]]:
    """The networks of this run, the manifest source, the card's source lines and license lines."""
    if cfg.input == "kegg":
        if ctx.mode != "live":
            raise DataError("metabolic input=kegg reads the kegg dataset; run it without --from-snapshot/--from-file "
                            "(or pass a KGML file with --from-file and input: sbml)")
        version = ctx.store.open(cfg.kegg_dataset, "astrobio-data run kegg")
        digest = version.manifest.get("content_digest", "")
        edges = version.read_table("pathway_edges.parquet")
        if edges.num_rows == 0:
            raise DataError(f"{version.ref} has no pathway reactions; run the kegg job with pathways")
        pathways = list(dict.fromkeys(edges["pathway"].to_pylist()))
        networks = kgml_networks(edges, {p: (f"{version.ref}/pathway_edges.parquet", digest) for p in pathways})
        return (networks, {"kind": "dataset", "dataset": version.ref, "manifest_content_digest": digest},
                [f"dataset `{version.ref}` (pathway_edges.parquet, KGML of {', '.join(pathways)})"], [KEGG_TERMS])
    if ctx.mode == "live":
        raise DataError("metabolic input=sbml has no download; use --from-snapshot (e_coli_core, iJO1366, iYS1720) "
                        "or --from-file MODEL.xml[.gz] (an SBML model, a KGML pathway, or a folder of them)")
    if ctx.mode == "snapshot":
        unknown = [m for m in cfg.models if not (SNAPSHOT_DIR / m).is_file()]
        if unknown:
            have = sorted(p.name for p in SNAPSHOT_DIR.iterdir() if p.name != "PROVENANCE.md")
            raise DataError(f"metabolic.models: {unknown[0]} is not in the snapshot (bundled: {', '.join(have)})")
        paths = [SNAPSHOT_DIR / m for m in cfg.models]
    else:
        assert ctx.file is not None
        if ctx.file.is_dir():
            paths = sorted(p for p in ctx.file.iterdir() if p.is_file() and ".xml" in p.name)
            if not paths:
                raise DataError(f"{ctx.file} holds no .xml or .xml.gz file; pass an SBML or KGML file")
        else:
            paths = [ctx.file]
    networks = [n for p in paths for n in read_network_file(p, p.name if ctx.mode == "snapshot" else str(p))]
    names = [n.name for n in networks]
    if len(set(names)) != len(names):
        raise DataError(f"two inputs name the same network ({', '.join(names)}); import them separately")
    files = {n.file: n.sha256 for n in networks}
    source: dict[str, Any] = {"kind": ctx.mode, "files": files}
    if ctx.mode == "snapshot":
        source["provenance"] = SNAPSHOT.read_text()
        lines = [f"bundled snapshot `metabolic_bigg`: {', '.join(cfg.models)} (cobrapy test data; see PROVENANCE.md)"]
    else:
        lines = [f"file `{f}` (sha256 {s[:12]}…)" for f, s in files.items()]
    kinds = {n.kind for n in networks}
    license = ([BIGG_CITATION] if "sbml" in kinds else []) + ([KEGG_TERMS] if "kgml" in kinds else [])
    return networks, source, lines, license


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    networks, source, source_lines, license = load(ctx, cfg)
    nets, nodes, edges, reactions = tables(networks)
    checked = validate(reactions, [_problem(r) for r in REASONS], max_invalid_share=cfg.max_invalid_share,
                       what="metabolic reactions")
    per_network = {f"{n['network']} metabolites": n["metabolites"] for n in nets.to_pylist()}
    per_network |= {f"{n['network']} reactions": n["reactions"] for n in nets.to_pylist()}
    per_network |= {f"{n['network']} edges": n["edges"] for n in nets.to_pylist()}
    formula_errors = {n["network"]: n["sbml_errors"] for n in nets.to_pylist() if n["sbml_errors"]}
    shards = [
        Shard.parquet("networks.parquet", nets),
        Shard.parquet("nodes.parquet", nodes),
        Shard.parquet("edges.parquet", edges),
        checked.shard(),
        card(
            "metabolic: metabolite-reaction bipartite graphs",
            source=source_lines,
            rows={"networks": nets.num_rows, "nodes": nodes.num_rows, "edges": edges.num_rows, **per_network},
            quarantined=checked.counts,
            columns=[
                ("nodes.node", "int32", "0-based index within its network: metabolites first, then reactions"),
                ("nodes.type", "string", "`metabolite` or `reaction`"),
                ("nodes.compartment", "string", "metabolite: SBML compartment id (c, e, p); reaction: its "
                 "metabolites' compartments, comma-joined (two or more = transport); empty for KGML"),
                ("nodes.reversible", "bool", "reaction: SBML `reversible` / KGML type; null for metabolites"),
                ("nodes.boundary", "bool", "reaction with metabolites on one side only (exchange, demand, sink)"),
                ("edges.metabolite / reaction", "int32", "node indices of the two ends (one edge per pair)"),
                ("edges.role", "string", "`substrate` (net coefficient < 0), `product` (> 0), `both` (cancels)"),
                ("edges.stoichiometry", "float64", "absolute net coefficient; null for KGML (none given)"),
            ],
            notes=[
                "Graph: the metabolite-reaction bipartite graph (not a metabolite-metabolite projection); every "
                "species of the model is a node, also when no reaction uses it.",
                "SBML is read with python-libsbml; a file with XML errors or no model is refused (exit 2). SBML "
                "validation errors that do not touch the graph are counted only"
                + (f": {', '.join(f'{k} {v}' for k, v in formula_errors.items())} (invalid fbc:chemicalFormula)"
                   if formula_errors else "") + ".",
                "Reactions with no participants, an undeclared species or a repeated id are quarantined with the "
                "reason and left out of the graph.",
                "KGML: one reaction node per KGML reaction name; its substrates and products from the reaction "
                "element (Biopython's KGML parser, as the kegg job reads it).",
            ],
            license=license,
        ),
    ]
    return Product(shards, source, rows_fetched=reactions.num_rows, rows_quarantined=checked.rows_invalid,
                   extra={**checked.summary(),
                          "networks": {n["network"]: {k: n[k] for k in ("metabolites", "reactions", "edges")}
                                       for n in nets.to_pylist()}})
