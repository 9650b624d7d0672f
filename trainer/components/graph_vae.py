"""Component `graph-vae`: a molecular graph VAE on the `molecules` dataset, scored with the MOSES metrics
against the MOSES reference rows and the published QM9 rows of GraphVAE and MolGAN."""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import nn

from datajobs.errors import DataError, require
from datajobs.job import snapshot_path
from datajobs.molecules import build_smiles, parse_graph
from datajobs.store import Store
from trainer import chem_metrics
from trainer.components.base import (
    Component,
    ComponentData,
    ComponentState,
    InputField,
    InvalidInput,
    ModelConfig,
    ReportSection,
    StepOutput,
)
from trainer.models.graph_vae import GraphVAE, laplacian_pe

# QM9 rows as published: validity / uniqueness / novelty
QM9_REFERENCE = [
    ("GraphVAE (Simonovsky & Komodakis 2018, Table 1)", 0.557, 0.760, 0.616),
    ("MolGAN (De Cao & Kipf 2018, Table 2)", 0.981, 0.104, 0.942),
]
MOSES_TABLE = snapshot_path("molecules_reference", "moses_readme_metrics.csv")


class GraphVAEModelConfig(ModelConfig):
    hidden: int = Field(128, gt=0)
    latent: int = Field(32, gt=0)
    layers: int = Field(3, gt=0, description="graph-transformer encoder layers")
    heads: int = Field(4, gt=0)
    lap_k: int = Field(4, ge=1, description="Laplacian eigenvectors per node (sign-invariant PE)")
    rw_steps: int = Field(8, ge=1, description="random-walk PE length")
    max_distance: int = Field(6, ge=1, description="shortest-path distances biased separately up to this")
    max_atoms: int | None = Field(None, gt=0, description="decoder length; default the training set's maximum")
    beta: float = Field(1.0, ge=0, description="KL weight after annealing")
    kl_anneal_steps: int = Field(2000, ge=0, description="linear KL warm-up, in micro-batches")
    free_bits: float = Field(0.05, ge=0, description="nats per latent dimension and molecule not penalised")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="share of teacher-forced decoder inputs hidden in "
                                 "training (word dropout, Bowman et al. 2016)")
    max_train_molecules: int | None = Field(None, gt=0, description="use the first N training molecules only")
    report_samples: int = Field(10000, gt=0, description="prior samples scored in the report")
    report_reference: int = Field(10000, gt=0, description="test molecules used as the reference set at most")
    report_fcd: bool = Field(True, description="compute FCD/Test (ChemNet; slow on CPU)")
    report_seed: int = Field(0)


def token_of(element: str, charge: int) -> str:
    return f"{element}{charge:+d}" if charge else element


def split_token(token: str) -> tuple[str, int]:
    for k, ch in enumerate(token):
        if ch in "+-":
            return token[:k], int(token[k:])
    return token, 0


def max_valence(token: str) -> int:
    """The largest number of bond orders RDKit accepts on this atom, all smaller counts accepted too."""
    chem = require("rdkit.Chem", "graph")
    element, charge = split_token(token)
    best = 0
    for v in range(1, 9):
        mol = chem.RWMol()
        atom = chem.Atom(element)
        atom.SetFormalCharge(charge)
        mol.AddAtom(atom)
        for _ in range(v):
            mol.AddBond(0, mol.AddAtom(chem.Atom("H")), chem.BondType.SINGLE)
        try:
            chem.SanitizeMol(mol)
        except Exception:  # RDKit's valence exceptions: this count is too many
            break
        best = v
    return best


class GraphDataset(torch.utils.data.Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def collate(items: list):
    from torch_geometric.data import Batch

    return Batch.from_data_list(items)


class GraphVAEComponent(Component):
    name = "graph-vae"
    description = "molecular graph VAE (graph transformer + autoregressive valence-masked decoder), MOSES metrics"
    model_config_cls = GraphVAEModelConfig
    needs = ("graph",)

    # -- data ------------------------------------------------------------------------------------
    def graph_item(self, elements: list[str], charges: list[int], bonds: list[tuple[int, int, int]], key: int):
        """One molecule (decoder-ordered) as a PyG Data object, or None when a token is outside the vocabulary."""
        from torch_geometric.data import Data

        index = {t: i for i, t in enumerate(self.vocab)}
        toks = [index.get(token_of(e, c)) for e, c in zip(elements, charges, strict=True)]
        if any(t is None for t in toks):
            return None
        src = [i for i, j, _ in bonds] + [j for i, j, _ in bonds]
        dst = [j for i, j, _ in bonds] + [i for i, j, _ in bonds]
        vecs, vals = laplacian_pe(len(toks), [(i, j) for i, j, _ in bonds], self.model_cfg.lap_k)
        return Data(x=torch.tensor(toks, dtype=torch.long), edge_index=torch.tensor([src, dst], dtype=torch.long),
                    edge_attr=torch.tensor([o for *_, o in bonds] * 2, dtype=torch.long),
                    lap=torch.from_numpy(vecs), lap_val=torch.from_numpy(vals),
                    idx=torch.tensor([key], dtype=torch.long), num_nodes=len(toks))

    def build_data(self, store: Store) -> ComponentData:
        cfg: GraphVAEModelConfig = self.model_cfg
        version = store.open(self.cfg.data.dataset)
        mols = version.read_table("molecules.parquet")
        atoms, bonds = version.read_table("atoms.parquet"), version.read_table("bonds.parquet")
        for table, what in ((mols, "molecules"), (atoms, "atoms"), (bonds, "bonds")):
            if "mol" not in table.column_names:
                raise DataError(f"{version.ref}/{what}.parquet lacks column 'mol'; re-create it with "
                                f"`{version.fix_command}`")
        n_atoms = np.asarray(mols["num_atoms"].to_numpy(), dtype=np.int64)
        n_bonds = np.asarray(mols["num_bonds"].to_numpy(), dtype=np.int64)
        if n_atoms.sum() != atoms.num_rows or n_bonds.sum() != bonds.num_rows:
            raise DataError(f"{version.ref}: atom/bond counts disagree with molecules.parquet; re-create it with "
                            f"`{version.fix_command}`")
        a_off, b_off = np.concatenate([[0], np.cumsum(n_atoms)]), np.concatenate([[0], np.cumsum(n_bonds)])
        elem, charge = atoms["element"].to_pylist(), atoms["formal_charge"].to_pylist()
        src, dst, order = (bonds[c].to_numpy() for c in ("src", "dst", "order"))
        split = mols["split"].to_pylist()
        smiles = mols["smiles"].to_pylist()
        ids = mols["mol"].to_pylist()
        train_rows = [i for i, s in enumerate(split) if s == "train"][: cfg.max_train_molecules]
        if len(train_rows) < 10:
            raise DataError(f"{version.ref} has {len(train_rows)} training molecules; publish more with "
                            f"`{version.fix_command}`")
        counts = Counter(token_of(elem[k], charge[k]) for i in train_rows for k in range(a_off[i], a_off[i + 1]))
        self.vocab = sorted(counts)
        self.valences = [max_valence(t) for t in self.vocab]
        self.max_atoms = cfg.max_atoms or int(n_atoms[train_rows].max())
        keep_train = set(train_rows)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        smiles_of: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        dropped: Counter[str] = Counter()
        for i, s in enumerate(split):
            if s == "train" and i not in keep_train:
                continue
            if n_atoms[i] > self.max_atoms:
                dropped[f"{s}: more than {self.max_atoms} atoms"] += 1
                continue
            lo, hi = a_off[i], a_off[i + 1]
            edges = [(int(src[k]), int(dst[k]), int(order[k])) for k in range(b_off[i], b_off[i + 1])]
            item = self.graph_item(elem[lo:hi], charge[lo:hi], edges, int(ids[i]))
            if item is None:
                dropped[f"{s}: atom type not in the training vocabulary"] += 1
                continue
            splits[s].append(item)
            smiles_of[s].append(smiles[i])
        self.train_smiles = set(smiles_of["train"])
        self.test_smiles = smiles_of["test"]
        self.test_items = splits["test"]
        if not splits["val"] or not splits["test"]:
            raise DataError(f"{version.ref} has an empty val or test split; publish it with val_fraction and "
                            f"test_fraction > 0 (`{version.fix_command}`)")
        card = (f"Molecules in `{version.ref}`: {len(split)}; used train {len(splits['train'])}, val "
                f"{len(splits['val'])}, test {len(splits['test'])} (split by the data job: "
                f"{version.manifest.get('source', {}).get('input', '?')} input). Atom vocabulary (element+charge) "
                f"from the training split: {', '.join(self.vocab)}; decoder length {self.max_atoms} atoms.")
        if dropped:
            card += " Not used: " + "; ".join(f"{k} ({v})" for k, v in sorted(dropped.items())) + "."
        return ComponentData(train=GraphDataset(splits["train"]), val=GraphDataset(splits["val"]),
                             test=GraphDataset(splits["test"]), collate_fn=collate,
                             lineage={self.cfg.data.dataset: version.ref}, card=card)

    def state(self) -> ComponentState:
        """What maps SMILES to model inputs and back (the bundle's component.json)."""
        c = self.model_cfg
        return ComponentState(meta={"vocab": self.vocab, "valences": self.valences, "max_atoms": self.max_atoms,
                                    "lap_k": c.lap_k, "rw_steps": c.rw_steps, "max_distance": c.max_distance})

    def load_state(self, state: ComponentState) -> None:
        meta = state.meta
        self.vocab, self.valences, self.max_atoms = list(meta["vocab"]), list(meta["valences"]), meta["max_atoms"]
        pe = {k: meta[k] for k in ("lap_k", "rw_steps", "max_distance")}
        self.model_cfg = self.model_cfg.model_copy(update=pe)

    def input_schema(self) -> list[InputField]:
        return [InputField("smiles", "", "str", description="a molecule (heavy atoms from the training vocabulary)")]

    # -- model and loss ----------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        c = self.model_cfg
        return GraphVAE(len(self.vocab), self.valences, self.max_atoms, hidden=c.hidden, latent=c.latent,
                        layers=c.layers, heads=c.heads, lap_k=c.lap_k, rw_steps=c.rw_steps,
                        max_distance=c.max_distance, beta=c.beta, kl_anneal_steps=c.kl_anneal_steps,
                        free_bits=c.free_bits, input_dropout=c.input_dropout)

    def training_step(self, model: nn.Module, batch) -> StepOutput:
        out = model(batch)
        return StepOutput(loss=out["loss"], samples=int(batch.num_graphs))

    def evaluation_step(self, model: nn.Module, batch) -> StepOutput:
        """recon + beta * free-bits KL at the final beta (the objective after the warm-up): the annealed training
        loss would favour weights from early in the KL warm-up (a small beta makes any loss look low)."""
        out = model(batch)
        return StepOutput(loss=out["selection"], samples=int(batch.num_graphs))

    # -- predict and sample -------------------------------------------------------------------------
    def _smiles(self, tokens: list[int], bonds: list[tuple[int, int, int]]) -> str | None:
        if not tokens:
            return None
        parts = [split_token(self.vocab[t]) for t in tokens]
        return build_smiles([e for e, _ in parts], [c for _, c in parts], bonds)

    def _raw(self, model: nn.Module) -> GraphVAE:
        return model.module if hasattr(model, "module") else model

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, seed: int, device: torch.device, *, constrained: bool = True,
               batch_size: int = 1000) -> list[str | None]:
        """SMILES of n molecules decoded from the prior (None where the graph is not a valid molecule)."""
        vae = self._raw(model).eval()
        gen = torch.Generator(device=device).manual_seed(seed)
        out: list[str | None] = []
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), vae.latent, generator=gen, device=device)
            dec = vae.decode(z, constrained=constrained, generator=gen)
            out += [self._smiles(t, b) for t, b in zip(dec.tokens, dec.bonds, strict=True)]
        return out

    @torch.no_grad()
    def encode_items(self, model: nn.Module, items: list, device: torch.device) -> torch.Tensor:
        vae = self._raw(model).eval()
        mus = [vae.encode(collate(items[i : i + 512]).to(device))[0] for i in range(0, len(items), 512)]
        return torch.cat(mus) if mus else torch.zeros(0, vae.latent, device=device)

    @torch.no_grad()
    def latent_usage(self, model: nn.Module, items: list, device: torch.device) -> dict[str, float]:
        """Does the decoder use z? Mean KL, active units (Burda et al. 2016: dimensions whose posterior mean varies
        across molecules with variance > 0.01), and the reconstruction NLL decoding each molecule from its own
        latent mean vs from another molecule's (a decoder that ignores z scores the same on both)."""
        vae = self._raw(model).eval()
        kl, own, other, mus = [], [], [], []
        for i in range(0, len(items), 512):
            batch = collate(items[i : i + 512]).to(device)
            tokens, mask, bonds = vae.dense(batch)
            mu, logvar = vae.encode(batch)
            kl.append(0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1))
            own.append(vae.reconstruction_loss(mu, tokens, mask, bonds))
            other.append(vae.reconstruction_loss(mu.roll(1, 0), tokens, mask, bonds))
            mus.append(mu)
        mu_all = torch.cat(mus)
        return {"KL (test, nats)": float(torch.cat(kl).mean()),
                "active units": float((mu_all.var(0) > 0.01).sum()),
                "recon NLL own z (test, nats)": float(torch.cat(own).mean()),
                "recon NLL shuffled z (test, nats)": float(torch.cat(other).mean())}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, mu: torch.Tensor, constrained: bool = True) -> list[str | None]:
        dec = self._raw(model).decode(mu, constrained=constrained, greedy=True)
        return [self._smiles(t, b) for t, b in zip(dec.tokens, dec.bonds, strict=True)]

    def predict(self, model: nn.Module, inputs: pa.Table, device: torch.device) -> pa.Table:
        """SMILES in (column `smiles`) -> latent mean and greedy reconstruction; bad rows raise InvalidInput."""
        problems = []
        items = []
        allowed = {split_token(t)[0] for t in self.vocab}
        for row, smi in enumerate(inputs["smiles"].to_pylist(), start=1):
            graph = parse_graph(smi or "", allowed, self.max_atoms)
            item = None if isinstance(graph, str) else self.graph_item(graph.elements, graph.charges, graph.bonds,
                                                                       row)
            if isinstance(graph, str) or item is None:
                why = graph if isinstance(graph, str) else "atom type not in the training vocabulary"
                problems.append((row, "smiles", smi, why))
            else:
                items.append(item)
        if problems:
            raise InvalidInput(problems)
        mu = self.encode_items(model, items, device)
        recon = self.reconstruct(model, mu)
        return pa.table({"latent_mean": pa.array(mu.cpu().numpy().tolist(), pa.list_(pa.float32())),
                         "reconstruction": pa.array(recon, pa.string())})

    # -- report --------------------------------------------------------------------------------------
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        cfg: GraphVAEModelConfig = self.model_cfg
        run_dir = Path(self.cfg.logging.run_dir) / self.cfg.run_name
        started = time.perf_counter()
        mu = self.encode_items(model, self.test_items, device)
        recon_on = self.reconstruct(model, mu, constrained=True)
        exact = float(np.mean([r == s for r, s in zip(recon_on, self.test_smiles, strict=True)]))
        on = self.sample(model, cfg.report_samples, cfg.report_seed, device, constrained=True)
        off = self.sample(model, cfg.report_samples, cfg.report_seed, device, constrained=False)
        reference = self.test_smiles[: cfg.report_reference]
        metrics = chem_metrics.moses_metrics(on, self.train_smiles, reference, with_fcd=cfg.report_fcd)
        metrics["valid (constraints off)"] = chem_metrics.validity(off)
        metrics["exact reconstruction (test)"] = exact
        usage = self.latent_usage(model, self.test_items, device)
        metrics.update(usage)
        names = ["valid", "valid (constraints off)", "unique@1k", "unique@10k", "novelty",
                 "exact reconstruction (test)", *usage, "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv",
                 "IntDiv2"]
        lines = [f"Held-out test molecules: {len(self.test_smiles)} (reference set for FCD/SNN/Frag/Scaf: "
                 f"{len(reference)}); prior samples: {cfg.report_samples} (seed {cfg.report_seed}); "
                 "metrics with the MOSES definitions on the valid samples (constraints on) unless marked. "
                 "Posterior collapse check: KL, active units (Burda et al. 2016) and the reconstruction NLL of each "
                 "test molecule decoded from its own latent mean vs another molecule's (equal when z is ignored).",
                 "",
                 "| metric | this model |", "|---|---|"]
        lines += [f"| {k} | {metrics[k]:.4f} |" for k in names if k in metrics]
        lines += ["", "QM9 rows as published (validity / uniqueness / novelty):", "",
                  "| model | valid | unique | novel |", "|---|---|---|---|",
                  f"| this model, constraints on | {metrics['valid']:.3f} | {metrics['unique@10k']:.3f} | "
                  f"{metrics['novelty']:.3f} |",
                  f"| this model, constraints off | {metrics['valid (constraints off)']:.3f} | | |"]
        lines += [f"| {name} | {v:.3f} | {u:.3f} | {nv:.3f} |" for name, v, u, nv in QM9_REFERENCE]
        with MOSES_TABLE.open() as f:
            rows = list(csv.DictReader(f))
        cols = ["Valid", "Unique@1k", "Unique@10k", "FCD_Test", "SNN_Test", "Frag_Test", "Scaf_Test", "IntDiv",
                "IntDiv2", "Novelty"]
        lines += ["", "MOSES reference rows (Polykovskiy et al. 2020, README table; trained and scored on MOSES, "
                  "not QM9: comparable only for a MOSES run):", "", "| model | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        lines += [f"| {r['Model']} | " + " | ".join(r[c] for c in cols) + " |" for r in rows]
        figures = self._figures(model, on, run_dir, device)
        lines += ["", *figures, "", f"Report computed in {time.perf_counter() - started:.0f} s."]
        return [ReportSection("Generation and reconstruction (MOSES metrics)", "\n".join(lines),
                              {k.replace(" ", "_"): float(v) for k, v in metrics.items()})]

    def _figures(self, model: nn.Module, samples: list[str | None], run_dir: Path, device: torch.device) -> list[str]:
        """samples.png (RDKit grid) and interpolation.png (QED along latent lines between test molecules)."""
        chem = require("rdkit.Chem", "graph")
        import matplotlib
        from rdkit.Chem import QED, Draw

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        run_dir.mkdir(parents=True, exist_ok=True)
        valid = [s for s in samples if s][:24]
        Draw.MolsToGridImage([chem.MolFromSmiles(s) for s in valid], molsPerRow=6, subImgSize=(200, 200),
                             legends=valid).save(run_dir / "samples.png")
        pairs = min(5, len(self.test_items) // 2)
        # spread over the test split (the data job's order is QM9's: its first molecules are the smallest)
        picks = np.linspace(0, len(self.test_items) - 1, 2 * pairs).round().astype(int).tolist()
        names = [self.test_smiles[i] for i in picks]
        mu = self.encode_items(model, [self.test_items[i] for i in picks], device)
        alphas = torch.linspace(0, 1, 11, device=device)
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in range(pairs):
            path = (1 - alphas)[:, None] * mu[2 * p] + alphas[:, None] * mu[2 * p + 1]
            smiles = self.reconstruct(model, path)
            qed = [QED.qed(chem.MolFromSmiles(s)) if s else float("nan") for s in smiles]
            ax.plot(alphas.cpu().numpy(), qed, marker="o", label=f"{names[2 * p]} -> {names[2 * p + 1]}")
        ax.set_xlabel("interpolation weight between two test molecules' latent means")
        ax.set_ylabel("QED of the greedy decoding")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(run_dir / "interpolation.png", dpi=120)
        plt.close(fig)
        return ["![24 prior samples (constraints on)](samples.png)", "",
                "![QED along latent interpolations](interpolation.png)"]
