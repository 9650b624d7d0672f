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
