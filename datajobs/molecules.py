"""KEGG flat-file entries and their KCF structures (ATOM/BOND sections) -> RDKit molecules and graph tables."""

from __future__ import annotations

from dataclasses import dataclass, field

from datajobs.errors import require

BOND_ORDERS = {1: "SINGLE", 2: "DOUBLE", 3: "TRIPLE"}


def parse_flat(text: str) -> list[dict[str, list[str]]]:
    """KEGG DBGET flat entries (`///`-separated): key -> list of value lines (continuations included)."""
    entries = []
    for block in text.split("///"):
        fields: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            if not line.strip():
                continue
            if line[:12].strip():
                key = line[:12].strip()
            if key is not None:
                fields.setdefault(key, []).append(line[12:].rstrip())
        if "ENTRY" in fields:
            entries.append(fields)
    return entries


@dataclass
class Structure:
    """One compound's KCF graph: atoms (element, KEGG atom type, x, y) and bonds (0-based i, j, order)."""

    atoms: list[tuple[str, str, float, float]] = field(default_factory=list)
    bonds: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def generic(self) -> bool:
        """Generic groups (R, X, ...) make it a class of molecules, not one molecule."""
        return any(elem in ("R", "X", "*") or elem.startswith("R") for elem, *_ in self.atoms)


def structure(fields: dict[str, list[str]]) -> Structure | None:
    """The ATOM/BOND sections of an entry, or None when it has none."""
    if "ATOM" not in fields or "BOND" not in fields:
        return None
    s = Structure()
    for line in fields["ATOM"][1:]:
        _, kegg_type, elem, x, y, *_ = line.split()
        s.atoms.append((elem, kegg_type, float(x), float(y)))
    for line in fields["BOND"][1:]:
        _, i, j, order, *_ = line.split()
        s.bonds.append((int(i) - 1, int(j) - 1, int(order)))
    return s


def to_smiles(s: Structure) -> str:
    """Canonical SMILES of the RDKit molecule built from the graph; ValueError when RDKit rejects it."""
    chem = require("rdkit.Chem", "chem")
    mol = chem.RWMol()
    try:
        for elem, *_ in s.atoms:
            mol.AddAtom(chem.Atom(elem))
        for i, j, order in s.bonds:
            if order not in BOND_ORDERS:
                raise ValueError(f"bond order {order}")
            mol.AddBond(i, j, getattr(chem.BondType, BOND_ORDERS[order]))
        chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several exception types (RuntimeError, sanitization errors)
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return chem.MolToSmiles(mol)


# -- molecular graphs for generative models ---------------------------------------------------------------

BOND_TYPES = {"SINGLE": 1, "DOUBLE": 2, "TRIPLE": 3}  # kekulized: no aromatic bond type


@dataclass
class MolGraph:
    """A connected molecule as decoder-ordered atoms (element, formal charge, implicit+explicit H count) and
    bonds (src < dst, order 1-3); atom 0 is RDKit's canonical rank 0 and the rest follow in breadth-first order
    (neighbours by canonical rank), so the first earlier neighbour of every atom is its BFS parent."""

    smiles: str  # canonical, non-isomeric
    elements: list[str]
    charges: list[int]
    hydrogens: list[int]
    bonds: list[tuple[int, int, int]]
    scaffold: str  # Bemis-Murcko scaffold SMILES ("" for acyclic molecules)


def bfs_order(mol) -> list[int]:
    """Atom indices in breadth-first order from canonical rank 0, neighbours visited by canonical rank."""
    chem = require("rdkit.Chem", "graph")
    ranks = list(chem.CanonicalRankAtoms(mol, breakTies=True))
    start = min(range(mol.GetNumAtoms()), key=ranks.__getitem__)
    order, seen = [start], {start}
    for i in order:
        for j in sorted((n.GetIdx() for n in mol.GetAtomWithIdx(i).GetNeighbors()), key=ranks.__getitem__):
            if j not in seen:
                seen.add(j)
                order.append(j)
    return order


def build_smiles(elements: list[str], charges: list[int], bonds: list[tuple[int, int, int]]) -> str | None:
    """Canonical SMILES of the graph after RDKit sanitization (implicit H from valence), or None if invalid."""
    chem = require("rdkit.Chem", "graph")
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = chem.RWMol()
    order = {1: chem.BondType.SINGLE, 2: chem.BondType.DOUBLE, 3: chem.BondType.TRIPLE}
    for elem, charge in zip(elements, charges, strict=True):
        atom = chem.Atom(elem)
        atom.SetFormalCharge(int(charge))
        mol.AddAtom(atom)
    for i, j, o in bonds:
        mol.AddBond(int(i), int(j), order[int(o)])
    try:
        chem.SanitizeMol(mol)
    except Exception:  # RDKit raises AtomValenceException, KekulizeException, ... (all mean: not a molecule)
        return None
    return chem.MolToSmiles(mol, isomericSmiles=False)


def parse_graph(smiles: str, elements: set[str], max_atoms: int) -> MolGraph | str:
    """The molecule's graph, or the reason it cannot be one (the quarantine reason)."""
    chem = require("rdkit.Chem", "graph")
    scaffolds = require("rdkit.Chem.Scaffolds.MurckoScaffold", "graph")
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return "unparseable SMILES"
    if len(chem.GetMolFrags(mol)) > 1:
        return "more than one fragment"
    outside = sorted({a.GetSymbol() for a in mol.GetAtoms()} - elements)
    if outside:
        return f"element outside the vocabulary ({outside[0]})"
    if mol.GetNumAtoms() > max_atoms:
        return f"too many heavy atoms (more than {max_atoms})"
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return "radical electrons"
    chem.RemoveStereochemistry(mol)
    canonical = chem.MolToSmiles(mol, isomericSmiles=False)
    mol = chem.RenumberAtoms(mol, bfs_order(mol))
    chem.Kekulize(mol, clearAromaticFlags=True)
    atoms = list(mol.GetAtoms())
    bonds = sorted((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                    BOND_TYPES[str(b.GetBondType())]) for b in mol.GetBonds())
    graph = MolGraph(canonical, [a.GetSymbol() for a in atoms], [a.GetFormalCharge() for a in atoms],
                     [a.GetTotalNumHs() for a in atoms], bonds,
                     scaffolds.MurckoScaffoldSmiles(mol=chem.MolFromSmiles(canonical)))
    if build_smiles(graph.elements, graph.charges, graph.bonds) != canonical:
        return "does not round-trip through element/charge/bond graph (explicit H needed)"
    return graph
