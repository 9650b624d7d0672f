"""GraphVAE model: permutation equivariance/invariance, Laplacian sign-flip invariance, valence-safe decoding,
order-independent noise; MOSES metric definitions on hand-made sets."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from datajobs.molecules import build_smiles, parse_graph
from trainer import chem_metrics
from trainer.components.graph_vae import max_valence, split_token
from trainer.models.graph_vae import GraphVAE, hashed_normal, laplacian_pe

VOCAB = ["C", "F", "N", "N+1", "O", "O-1"]


def data_of(smiles: str, key: int = 0) -> Data:
    graph = parse_graph(smiles, {"C", "N", "O", "F"}, 20)
    assert not isinstance(graph, str)
    toks = [VOCAB.index(e if not c else f"{e}{c:+d}") for e, c in zip(graph.elements, graph.charges, strict=True)]
    vecs, vals = laplacian_pe(len(toks), [(i, j) for i, j, _ in graph.bonds], 4)
    src = [i for i, _, _ in graph.bonds] + [j for _, j, _ in graph.bonds]
    dst = [j for _, j, _ in graph.bonds] + [i for i, _, _ in graph.bonds]
    return Data(x=torch.tensor(toks), edge_index=torch.tensor([src, dst]),
                edge_attr=torch.tensor([o for *_, o in graph.bonds] * 2), lap=torch.from_numpy(vecs),
                lap_val=torch.from_numpy(vals), idx=torch.tensor([key]), num_nodes=len(toks))


def permuted(d: Data, perm: torch.Tensor) -> Data:
    """The same graph with node i of the result being node perm[i] of d."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    return Data(x=d.x[perm], edge_index=inverse[d.edge_index], edge_attr=d.edge_attr, lap=d.lap[perm],
                lap_val=d.lap_val[perm], idx=d.idx, num_nodes=d.num_nodes)


@pytest.fixture(scope="module")
def model() -> GraphVAE:
    torch.manual_seed(0)
    return GraphVAE(len(VOCAB), [max_valence(t) for t in VOCAB], 12, hidden=32, latent=8, layers=2, heads=4).eval()


def test_encoder_is_permutation_equivariant_per_node_and_invariant_per_graph(model: GraphVAE) -> None:
    d = data_of("CC(=O)Nc1ccc(O)cc1")
    perm = torch.randperm(d.num_nodes, generator=torch.Generator().manual_seed(1))
    a, b = Batch.from_data_list([d]), Batch.from_data_list([permuted(d, perm)])
    with torch.no_grad():
        torch.testing.assert_close(model.node_states(b), model.node_states(a)[perm], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.encode(b)[0], model.encode(a)[0], atol=1e-5, rtol=1e-4)
        # batch neighbours and padding do not change a molecule's encoding
        pair = model.encode(Batch.from_data_list([data_of("OCCCCCCCCCCN"), d]))[0][1]
        torch.testing.assert_close(pair, model.encode(a)[0][0], atol=1e-5, rtol=1e-4)
        # and it is not trivially constant: another molecule encodes differently
        other = model.encode(Batch.from_data_list([data_of("CC(=O)Nc1ccc(F)cc1")]))[0]
        assert (other - model.encode(a)[0]).abs().max() > 1e-3


def test_laplacian_eigenvector_sign_flips_change_nothing(model: GraphVAE) -> None:
    d = data_of("OC1CC(N)C1C#N")
    flipped = d.clone()
    flipped.lap = d.lap * torch.tensor([-1.0, 1.0, -1.0, -1.0])
    a, b = Batch.from_data_list([d]), Batch.from_data_list([flipped])
    with torch.no_grad():
        torch.testing.assert_close(model.node_states(b), model.node_states(a), atol=1e-6, rtol=1e-5)
        assert (d.lap.abs() > 1e-3).any()


def test_constrained_decoding_never_breaks_valence_on_1000_samples(model: GraphVAE) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1000, model.latent, generator=gen) * 3.0
    valences = [max_valence(t) for t in VOCAB]
    assert valences == [4, 1, 3, 4, 2, 1]

    def smiles(decoded) -> list[str | None]:
        out = []
        for toks, bonds in zip(decoded.tokens, decoded.bonds, strict=True):
            parts = [split_token(VOCAB[t]) for t in toks]
            out.append(build_smiles([e for e, _ in parts], [c for _, c in parts], bonds) if toks else None)
        return out

    on = model.decode(z, constrained=True, generator=gen)
    for toks, bonds in zip(on.tokens, on.bonds, strict=True):
        used = [0] * len(toks)
        for i, j, o in bonds:
            used[i] += o
            used[j] += o
        assert all(u <= valences[t] for u, t in zip(used, toks, strict=True))
    assert all(s is not None and "." not in s for s in smiles(on))  # valid and connected (one fragment)
    assert max(len(t) for t in on.tokens) > 3  # the untrained decoder builds real graphs, not single atoms
    off = smiles(model.decode(z, constrained=False, generator=torch.Generator().manual_seed(0)))
    assert chem_metrics.validity(off) < 1.0  # without the mask the same untrained model does break valence


def test_noise_depends_on_molecule_and_step_only() -> None:
    keys = torch.arange(5000)
    full = hashed_normal(keys, 7, 16)
    torch.testing.assert_close(hashed_normal(keys[2500:], 7, 16), full[2500:])
    assert not torch.equal(hashed_normal(keys, 8, 16), full)
    assert abs(float(full.mean())) < 0.02 and abs(float(full.std()) - 1.0) < 0.02


def test_moses_metric_definitions_on_hand_made_sets() -> None:
    a = ["CCO", "c1ccccc1", "CC(=O)O", "c1ccncc1"]
    assert chem_metrics.unique_at(a + a, 8) == 0.5
    assert chem_metrics.novelty(a, set(a)) == 0.0
    assert chem_metrics.novelty(["CCN", "CCO"], {"CCO"}) == 0.5
    assert chem_metrics.validity(["CCO", "C(C(", None, "c1ccccc1"]) == 0.5
    assert chem_metrics.internal_diversity(["c1ccccc1O"] * 4) == pytest.approx(0.0, abs=1e-6)
    assert chem_metrics.internal_diversity(a) > 0.5
    assert chem_metrics.snn(a, a) == pytest.approx(1.0)
    assert chem_metrics.scaffold_similarity(["c1ccccc1O", "c1ccccc1N"], ["c1ccccc1C"]) == pytest.approx(1.0)
    assert chem_metrics.scaffold_similarity(["c1ccccc1O"], ["C1CCCCC1O"]) == 0.0
    assert chem_metrics.frag_similarity(a, a) == pytest.approx(1.0)
    # Tanimoto by hand: two bit vectors sharing 1 of 3 set bits
    import numpy as np

    x, y = np.array([[1, 1, 0, 0]], np.uint8), np.array([[0, 1, 1, 0]], np.uint8)
    assert chem_metrics._tanimoto_agg(x, y, "max")[0] == pytest.approx(1 / 3)
