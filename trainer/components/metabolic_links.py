"""Component `metabolic-links`: held-out metabolite-reaction link prediction on the `metabolic` dataset, scored
with AUROC and average precision against the length-3-path forms of common neighbours and Adamic-Adar."""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field
from torch import nn

from datajobs.errors import DataError, require
from datajobs.store import Store
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
from trainer.models.link_predictor import LinkPredictor

ROLES = ("substrate", "product", "both")
EDGE_TYPE = ("metabolite", "in", "reaction")
TEST_PAIRS = "test_pairs.csv"


class LinkModelConfig(ModelConfig):
    networks: list[str] | None = Field(None, description="networks of the dataset to use; default all")
    hidden: int = Field(64, gt=0)
    layers: int = Field(2, gt=0, description="GraphSAGE layers")
    dropout: float = Field(0.1, ge=0, lt=1)
    pair_features: bool = Field(True, description="give the decoder log1p(CN3) and AA3 of each pair")
    disjoint_train_ratio: float = Field(0.3, ge=0, lt=1, description="share of training edges used only as "
                                        "supervision, never as message edges (PyG RandomLinkSplit)")
    negatives_per_positive: float = Field(1.0, gt=0, description="random non-edges per training edge per step")
    steps_per_network: int = Field(64, gt=0, description="training items per network and sampler epoch")
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of the test pairs for the intervals")
    report_seed: int = Field(0)


@dataclass
class Graph:
    """One network's graph as the model sees it: M metabolites (nodes 0..M-1), R reactions (M..M+R-1)."""

    name: str
    metabolite_ids: list[str]
    reaction_ids: list[str]
    compartments: np.ndarray  # [M] index into the compartment vocabulary (last = other/none)
    reversible: np.ndarray  # [R] bool
    edges: np.ndarray  # [E, 2] (metabolite, reaction) of the message graph
    roles: np.ndarray  # [E] index into ROLES


def l3_scores(edges: np.ndarray, m: int, r: int, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Length-3 path scores of (metabolite, reaction) pairs [P, 2] on the bipartite graph `edges` [E, 2]:
    CN3 = (A^3)_mr, the number of walks m - r' - m' - r (the bipartite form of common neighbours: Kunegis, De Luca
    & Albayrak 2010; Daminelli et al. 2015), and AA3 = the same walks each weighted by 1/sqrt(log k_r' log k_m')
    (Adamic & Adar 2003's 1/log-degree hub weight on both inner nodes, combined as Kovacs et al. 2019 combine the
    degrees on L3 paths). Inner nodes of degree < 2 lie on no such path between two other nodes (weight 0)."""
    sp = require("scipy.sparse", "metabolic")
    a = sp.csr_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(m, r))
    a.data[:] = 1.0
    k_met, k_rx = np.asarray(a.sum(1)).ravel(), np.asarray(a.sum(0)).ravel()

    def weight(k: np.ndarray) -> np.ndarray:
        out = np.zeros_like(k, dtype=np.float64)
        out[k >= 2] = 1.0 / np.sqrt(np.log(k[k >= 2]))
        return out

    at = a.T.tocsr()
    out = {}
    for name, w_rx, w_met in (("CN3", np.ones(r), np.ones(m)), ("AA3", weight(k_rx), weight(k_met))):
        co = (a @ sp.diags(w_rx) @ at).tocsr()  # [M, M]: weighted reactions shared by two metabolites
        right = (sp.diags(w_met) @ a).T.tocsr()  # [R, M]: weighted metabolites of each reaction
        rows, cols = co[pairs[:, 0]], right[pairs[:, 1]]
        out[name] = np.asarray(rows.multiply(cols).sum(1)).ravel()
    return out


def node_features(g: Graph, n_compartments: int) -> np.ndarray:
    """[M + R, F]: node type, compartment (metabolite) or compartments of its message edges (reaction),
    reversibility, log1p degree in all, as substrate and as product (message edges only, never held-out ones)."""
    m, r = len(g.metabolite_ids), len(g.reaction_ids)
    c = n_compartments
    x = np.zeros((m + r, 2 + c + 1 + 3), dtype=np.float32)
    x[:m, 0] = 1.0
    x[m:, 1] = 1.0
    x[np.arange(m), 2 + g.compartments] = 1.0
    x[m + g.edges[:, 1], 2 + g.compartments[g.edges[:, 0]]] = 1.0
    x[m:, 2 + c] = g.reversible.astype(np.float32)
    for col, mask in ((0, np.ones(len(g.roles), bool)), (1, g.roles == 0), (2, g.roles == 1)):
        deg = np.bincount(g.edges[mask, 0], minlength=m).tolist() + np.bincount(g.edges[mask, 1], minlength=r).tolist()
        x[:, 3 + c + col] = np.log1p(np.asarray(deg, dtype=np.float32))
    return x


def message_index(g: Graph) -> torch.Tensor:
    """Undirected homogeneous edge_index [2, 2E] of the message graph."""
    m = len(g.metabolite_ids)
    src, dst = torch.from_numpy(g.edges[:, 0]), torch.from_numpy(g.edges[:, 1] + m)
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]).long()


def seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 32


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and Python's random (PyG's negative sampling draws from `random`), restoring them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class PairSet(torch.utils.data.Dataset):
    """Items for the loop: one graph plus labelled pairs. Training items draw fresh negatives per index."""

    def __init__(self, component: MetabolicLinksComponent, items: list[dict], train: bool, repeats: int = 1) -> None:
        self.component, self.items, self.train, self.repeats = component, items, train, repeats

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.items[i % len(self.items)]
        g: Graph = item["graph"]
        pos = item["pairs"][item["labels"] == 1] if self.train else item["pairs"]
        labels = np.ones(len(pos), np.float32) if self.train else item["labels"]
        if self.train:  # random non-edges of the known training graph, bipartite (metabolite, reaction)
            from torch_geometric.utils import negative_sampling

            n = max(1, round(len(pos) * self.component.model_cfg.negatives_per_positive))
            known = torch.from_numpy(item["known"].T.copy()).long()
            with seeded(seed_of(self.component.cfg.train.seed, g.name, i)):
                neg = negative_sampling(known, num_nodes=(len(g.metabolite_ids), len(g.reaction_ids)),
                                        num_neg_samples=n).T.numpy()
            pos = np.concatenate([pos, neg])
            labels = np.concatenate([labels, np.zeros(len(neg), np.float32)])
        return self.component.batch(g, pos, labels)


def labelled(data) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [P, 2], labels [P]) of a RandomLinkSplit output's supervision edges."""
    return data[EDGE_TYPE].edge_label_index.T.numpy().astype(np.int64), data[EDGE_TYPE].edge_label.numpy()


def collate_one(items: list[dict]) -> dict:
    if len(items) != 1:
        raise DataError("metabolic-links trains one graph per micro-batch; set data.batch_size: 1")
    return items[0]


class MetabolicLinksComponent(Component):
    name = "metabolic-links"
    description = "metabolite-reaction link prediction (GraphSAGE + MLP decoder) vs CN3/AA3 path baselines"
    model_config_cls = LinkModelConfig
    needs = ("graph", "metabolic")

    # -- graphs ------------------------------------------------------------------------------------
    def graph(self, name: str, nodes: pa.Table, edges: np.ndarray, roles: np.ndarray) -> Graph:
        is_met = np.asarray(pc.equal(nodes["type"], "metabolite").to_numpy(zero_copy_only=False), bool)
        ids = nodes["id"].to_pylist()
        comp_index = {c: i for i, c in enumerate(self.compartments)}
        comps = [comp_index.get(c, len(self.compartments)) for c, is_m in
                 zip(nodes["compartment"].to_pylist(), is_met, strict=True) if is_m]
        reversible = [bool(v) for v, is_m in zip(nodes["reversible"].to_pylist(), is_met, strict=True) if not is_m]
        return Graph(name, [i for i, is_m in zip(ids, is_met, strict=True) if is_m],
                     [i for i, is_m in zip(ids, is_met, strict=True) if not is_m], np.asarray(comps, np.int64),
                     np.asarray(reversible, bool), edges.astype(np.int64), roles.astype(np.int64))

    def batch(self, g: Graph, pairs: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for pairs [P, 2] (metabolite, reaction) scored on graph g."""
        m = len(g.metabolite_ids)
        out = {"x": torch.from_numpy(node_features(g, len(self.compartments) + 1)),
               "edge_index": message_index(g),
               "pairs": torch.from_numpy(np.stack([pairs[:, 0], pairs[:, 1] + m])).long(),
               "labels": torch.from_numpy(np.asarray(labels, np.float32))}
        if self.model_cfg.pair_features:
            s = l3_scores(g.edges, m, len(g.reaction_ids), pairs)
            out["pair_x"] = torch.from_numpy(np.stack([np.log1p(s["CN3"]), s["AA3"]], 1).astype(np.float32))
        return out

    def build_data(self, store: Store) -> ComponentData:
        require("torch_geometric", "graph")
        import torch_geometric.transforms as T
        from torch_geometric.data import HeteroData

        cfg: LinkModelConfig = self.model_cfg
        version = store.open(self.cfg.data.dataset, "astrobio-data run metabolic --from-snapshot")
        nets, nodes, edges = (version.read_table(f"{t}.parquet") for t in ("networks", "nodes", "edges"))
        for table, cols, what in ((nodes, ("network", "node", "id", "type", "compartment", "reversible"), "nodes"),
                                  (edges, ("network", "metabolite", "reaction", "role"), "edges")):
            missing = [c for c in cols if c not in table.column_names]
            if missing:
                raise DataError(f"{version.ref}/{what}.parquet lacks column {missing[0]!r}; re-create it with "
                                f"`{version.fix_command}`")
        names = nets["network"].to_pylist()
        chosen = cfg.networks or names
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise DataError(f"{version.ref} has no network {unknown[0]!r} (it has {', '.join(names)}); set "
                            f"model.networks or publish it with `astrobio-data run metabolic`")
        if not self.frozen:
            met_comps = pc.filter(nodes["compartment"], pc.equal(nodes["type"], "metabolite")).to_pylist()
            self.compartments = sorted({c for c in met_comps if c})
        seed, val, test = self.cfg.data.split_seed, self.cfg.data.val_fraction, self.cfg.data.test_fraction
        if val <= 0 or test <= 0:
            raise DataError("metabolic-links holds out validation and test edges: set data.val_fraction and "
                            "data.test_fraction above 0")
        train_items, val_items, self.test_items = [], [], []
        self.graphs: dict[str, Graph] = {}
        card = [f"Networks of `{version.ref}`: {', '.join(chosen)}. Edges (metabolite, reaction) split per network "
                f"by PyG RandomLinkSplit (seed {seed}): validation {val:.0%}, test {test:.0%}; of the training edges "
                f"{cfg.disjoint_train_ratio:.0%} are supervision-only. Validation/test negatives: as many random "
                "(metabolite, reaction) non-edges of the whole network; training negatives are drawn per step from "
                "the non-edges of the training graph."]
        for name in chosen:
            nd = nodes.filter(pc.equal(nodes["network"], name)).sort_by("node")
            ed = edges.filter(pc.equal(edges["network"], name))
            m = int(pc.sum(pc.equal(nd["type"], "metabolite")).as_py())
            pairs = np.stack([ed["metabolite"].to_numpy(), ed["reaction"].to_numpy() - m], 1).astype(np.int64)
            role_of = {r: i for i, r in enumerate(ROLES)}
            roles = np.asarray([role_of[r] for r in ed["role"].to_pylist()], np.int64)
            r = nd.num_rows - m
            if len(pairs) < 20:
                raise DataError(f"{version.ref}: network {name} has {len(pairs)} edges, too few to hold out")
            het = HeteroData()
            het["metabolite"].num_nodes, het["reaction"].num_nodes = m, r
            het[EDGE_TYPE].edge_index = torch.from_numpy(pairs.T.copy())
            het[EDGE_TYPE].role = torch.from_numpy(roles)
            het["reaction", "has", "metabolite"].edge_index = torch.from_numpy(pairs[:, ::-1].T.copy())
            split = T.RandomLinkSplit(num_val=val, num_test=test, is_undirected=True,
                                      disjoint_train_ratio=cfg.disjoint_train_ratio, neg_sampling_ratio=1.0,
                                      add_negative_train_samples=False, edge_types=[EDGE_TYPE],
                                      rev_edge_types=[("reaction", "has", "metabolite")])
            with seeded(seed_of(seed, name)):
                tr, va, te = split(het)
            train_graph, val_graph, test_graph = (self.graph(name, nd, d[EDGE_TYPE].edge_index.T.numpy(),
                                                             d[EDGE_TYPE].role.numpy()) for d in (tr, va, te))
            tr_pairs, tr_labels = labelled(tr)
            known = np.concatenate([train_graph.edges, tr_pairs])
            train_items.append({"graph": train_graph, "pairs": tr_pairs, "labels": tr_labels, "known": known})
            val_items.append({"graph": val_graph, "pairs": labelled(va)[0], "labels": labelled(va)[1]})
            self.test_items.append({"graph": test_graph, "pairs": labelled(te)[0], "labels": labelled(te)[1]})
            self.graphs[name] = test_graph  # predict scores against the training + validation edges
            card.append(f"- {name}: {m} metabolites, {r} reactions, {len(pairs)} edges; message edges "
                        f"{len(train_graph.edges)}, training supervision {len(tr_pairs)}, validation "
                        f"{int(labelled(va)[1].sum())} (+ as many negatives), test {int(labelled(te)[1].sum())} "
                        "(+ as many negatives)")
        self.n_features = node_features(next(iter(self.graphs.values())), len(self.compartments) + 1).shape[1]
        return ComponentData(train=PairSet(self, train_items, True, cfg.steps_per_network),
                             val=PairSet(self, val_items, False), test=PairSet(self, self.test_items, False),
                             collate_fn=collate_one, lineage={self.cfg.data.dataset: version.ref},
                             card="\n".join(card))

    # -- bundle state --------------------------------------------------------------------------------
    def state(self) -> ComponentState:
        arrays = {}
        nets = []
        for i, g in enumerate(self.graphs.values()):
            nets.append({"name": g.name, "metabolites": g.metabolite_ids, "reactions": g.reaction_ids})
            arrays |= {f"g{i}_compartments": g.compartments, f"g{i}_reversible": g.reversible,
                       f"g{i}_edges": g.edges, f"g{i}_roles": g.roles}
        return ComponentState(meta={"compartments": self.compartments, "networks": nets,
                                    "pair_features": self.model_cfg.pair_features}, arrays=arrays)

    def load_state(self, state: ComponentState) -> None:
        self.compartments = list(state.meta["compartments"])
        self.model_cfg = self.model_cfg.model_copy(update={"pair_features": state.meta["pair_features"]})
        self.graphs = {}
        for i, n in enumerate(state.meta["networks"]):
            a = state.arrays
            self.graphs[n["name"]] = Graph(n["name"], list(n["metabolites"]), list(n["reactions"]),
                                           a[f"g{i}_compartments"], a[f"g{i}_reversible"].astype(bool),
                                           a[f"g{i}_edges"], a[f"g{i}_roles"])
        self.n_features = 2 + len(self.compartments) + 1 + 1 + 3
        self.frozen = True

    def input_schema(self) -> list[InputField]:
        return [InputField("network", "", "str", description="network name (e.g. e_coli_core)"),
                InputField("metabolite", "", "str", description="metabolite id of that network (e.g. M_atp_c)"),
                InputField("reaction", "", "str", description="reaction id of that network (e.g. R_PFK)")]

    # -- model and loss ------------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        c = self.model_cfg
        return LinkPredictor(self.n_features, hidden=c.hidden, layers=c.layers, dropout=c.dropout,
                             pair_features=2 if c.pair_features else 0)

    def training_step(self, model: nn.Module, batch: dict) -> StepOutput:
        logits = model(batch["x"], batch["edge_index"], batch["pairs"], batch.get("pair_x"))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
        return StepOutput(loss=loss, samples=int(batch["labels"].numel()))

    @torch.no_grad()
    def scores(self, model: nn.Module, g: Graph, pairs: np.ndarray, device: torch.device) -> np.ndarray:
        """Probabilities of pairs [P, 2] (metabolite, reaction) on graph g."""
        model.eval()
        b = {k: v.to(device) for k, v in self.batch(g, pairs, np.zeros(len(pairs), np.float32)).items()}
        return torch.sigmoid(model(b["x"], b["edge_index"], b["pairs"], b.get("pair_x"))).cpu().numpy()

    def predict(self, model: nn.Module, inputs: pa.Table, device: torch.device) -> pa.Table:
        """(network, metabolite id, reaction id) -> `score`, the predicted probability that the metabolite takes
        part in the reaction, on the bundle's graph (training + validation edges; test edges are not in it)."""
        problems, rows = [], []
        index = {n: ({m: i for i, m in enumerate(g.metabolite_ids)}, {r: i for i, r in enumerate(g.reaction_ids)})
                 for n, g in self.graphs.items()}
        cols = [inputs[c].to_pylist() for c in ("network", "metabolite", "reaction")]
        for row, (net, met, rx) in enumerate(zip(*cols, strict=True), start=1):
            if net not in index:
                problems.append((row, "network", net, f"not a network of this model ({', '.join(index)})"))
            elif met not in index[net][0]:
                problems.append((row, "metabolite", met, f"not a metabolite of {net}"))
            elif rx not in index[net][1]:
                problems.append((row, "reaction", rx, f"not a reaction of {net}"))
            else:
                rows.append((net, index[net][0][met], index[net][1][rx]))
        if problems:
            raise InvalidInput(problems)
        out = np.zeros(len(rows))
        for net, g in self.graphs.items():
            at = [i for i, (n, _, _) in enumerate(rows) if n == net]
            if at:
                pairs = np.asarray([rows[i][1:] for i in at], np.int64)
                out[at] = self.scores(model, g, pairs, device)
        return pa.table({"score": pa.array(out, pa.float64())})

    # -- report --------------------------------------------------------------------------------------
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        sk = require("sklearn.metrics", "metabolic")
        roc_auc_score, average_precision_score = sk.roc_auc_score, sk.average_precision_score
        cfg: LinkModelConfig = self.model_cfg
        run_dir = Path(self.cfg.logging.run_dir) / self.cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"Held-out test edges per network (never used for training, early stopping or tuning), with as many "
                 f"random non-edges; scores on the graph of training + validation edges. 95% intervals: "
                 f"{cfg.bootstrap} bootstrap resamples of the test pairs (seed {cfg.report_seed}); `gain` is the "
                 "paired bootstrap of model AUROC minus the better baseline's AUROC.", "",
                 "CN3: number of length-3 walks metabolite - reaction' - metabolite' - reaction, the bipartite form of "
                 "common neighbours (two nodes of different types share no neighbour; Liben-Nowell & Kleinberg 2007; "
                 "Kunegis et al. 2010). AA3: the same walks weighted by 1/sqrt(log k log k') of their two inner "
                 "nodes (Adamic & Adar 2003's hub down-weighting).", "",
                 "| network | test pairs | model AUROC | CN3 AUROC | AA3 AUROC | model AP | CN3 AP | AA3 AP | "
                 "gain (95% CI) | goal met |", "|---|---|---|---|---|---|---|---|---|---|"]
        metrics: dict[str, float] = {}
        csv_rows = []
        rng = np.random.default_rng(cfg.report_seed)
        for item in self.test_items:
            g: Graph = item["graph"]
            pairs, labels = item["pairs"], item["labels"]
            s = {"model": self.scores(model, g, pairs, device),
                 **l3_scores(g.edges, len(g.metabolite_ids), len(g.reaction_ids), pairs)}
            auc = {k: roc_auc_score(labels, v) for k, v in s.items()}
            ap = {k: average_precision_score(labels, v) for k, v in s.items()}
            boot = {k: [] for k in s}
            for _ in range(cfg.bootstrap):
                idx = rng.integers(0, len(labels), len(labels))
                if labels[idx].min() == labels[idx].max():
                    continue
                for k, v in s.items():
                    boot[k].append(roc_auc_score(labels[idx], v[idx]))
            b = {k: np.asarray(v) for k, v in boot.items()}
            gain = b["model"] - np.maximum(b["CN3"], b["AA3"])
            ci = {k: np.percentile(v, [2.5, 97.5]) for k, v in b.items()}
            lo, hi = np.percentile(gain, [2.5, 97.5])
            met = auc["model"] > auc["CN3"] and auc["model"] > auc["AA3"]
            verdict = ("yes" if lo > 0 else "yes (point estimate; interval includes 0)") if met else "no"
            cell = {k: f"{auc[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in s}
            lines.append(f"| {g.name} | {len(labels)} | {cell['model']} | {cell['CN3']} | {cell['AA3']} | "
                         f"{ap['model']:.3f} | {ap['CN3']:.3f} | {ap['AA3']:.3f} | "
                         f"{auc['model'] - max(auc['CN3'], auc['AA3']):+.3f} [{lo:+.3f}, {hi:+.3f}] | {verdict} |")
            for k in s:
                metrics[f"{g.name}_auroc_{k}"] = float(auc[k])
                metrics[f"{g.name}_ap_{k}"] = float(ap[k])
            metrics[f"{g.name}_goal_met"] = float(met)
            csv_rows += [{"network": g.name, "metabolite": g.metabolite_ids[p[0]], "reaction": g.reaction_ids[p[1]],
                          "label": int(lab), "model": float(sm), "CN3": float(c), "AA3": float(a)}
                         for p, lab, sm, c, a in zip(pairs, labels, s["model"], s["CN3"], s["AA3"], strict=True)]
        import pyarrow.csv as pcsv

        pcsv.write_csv(pa.Table.from_pylist(csv_rows), run_dir / TEST_PAIRS)
        lines += ["", f"Per-pair scores: `{TEST_PAIRS}` (`astrobio-train predict -m RUN --input {TEST_PAIRS}` "
                  "reproduces the model column).",
                  f"Decoder pair features (CN3, AA3): {'on' if cfg.pair_features else 'off'}."]
        met_all = all(metrics[f"{g}_goal_met"] for g in (i["graph"].name for i in self.test_items))
        metrics["goal_met_all_networks"] = float(met_all)
        return [ReportSection("Link prediction on held-out edges (AUROC, AP)", "\n".join(lines),
                              {k: v for k, v in metrics.items() if math.isfinite(v)})]
