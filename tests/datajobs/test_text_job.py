"""text: the bundled corpus and the arXiv feed -> tokenizer.json + packed uint16 token shards."""

from __future__ import annotations

import io
import itertools

import numpy as np
from tokenizers import Tokenizer

from datajobs.cli import main
from datajobs.store import Store
from datajobs.tokens import EOS


def load_tokens(version, shard: str) -> np.ndarray:
    return np.load(io.BytesIO(version.read_bytes(shard)))["tokens"]


def test_snapshot_corpus(tmp_path):
    root = str(tmp_path / "data")
    assert main(["run", "text", "--from-snapshot", "--root", root]) == 0
    store = Store(root)
    version = store.open("text@latest")
    m = version.manifest
    assert m["tokenizer"]["vocab_size"] == 4096
    assert m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == 159
    assert 0 < m["splits"]["val"]["docs"] < 0.15 * 159
    tok = Tokenizer.from_str(version.read_bytes("tokenizer.json").decode())
    eos = m["tokenizer"]["eos_id"]
    assert tok.token_to_id(EOS) == eos
    val = load_tokens(version, "val-00000.npz")
    assert val.dtype == np.uint16 and val.ndim == 1 and len(val) == m["splits"]["val"]["tokens"]
    assert int((val == eos).sum()) == m["splits"]["val"]["docs"] and val[-1] == eos
    first_doc = val[: int(np.argmax(val == eos))]
    assert len(tok.decode(first_doc.tolist())) > 100
    # identical input -> identical tokenizer and shards -> no new version
    assert main(["run", "text", "--from-snapshot", "--root", root]) == 0
    assert store.versions("text") == [version.version]


def test_arxiv_paging_with_a_fault(tmp_path, replay, config):
    replay.fail("/api/query", "503")
    root = str(tmp_path / "data")
    assert main(["run", "text", "--root", root, "--config", str(config())]) == 0
    starts = [r.query["start"][0] for r in replay.requests]
    assert starts == ["0", "0", "2", "4"]  # 503 retried, then polite paging until totalResults
    version = Store(root).open("text@latest")
    assert version.manifest["splits"]["train"]["docs"] + version.manifest["splits"]["val"]["docs"] == 5
    assert version.manifest["source"]["query"] == "cat:astro-ph.EP"
    assert len(load_tokens(version, "train-00000.npz")) == version.manifest["splits"]["train"]["tokens"]


def test_bad_jsonl_line_is_exit_2(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "hello"}\nnot json\n')
    assert main(["run", "text", "--from-file", str(corpus), "--root", str(tmp_path / "d")]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


def test_per_host_rate_limit_spaces_requests(tmp_path, replay, config):
    cfg = config(text={"http": {"requests_per_second": 5.0, "timeout_s": 2.0}})
    assert main(["run", "text", "--root", str(tmp_path), "--config", str(cfg)]) == 0
    assert len(replay.requests) == 3
    arrivals = [r.received for r in replay.requests]  # the server's clock: 3 pages at 5/s arrive 0.2 s apart
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(arrivals)), arrivals
