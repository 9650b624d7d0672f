"""ncbi: esearch with the history server, then efetch in batches, from recorded E-utilities responses."""

from __future__ import annotations

from datajobs.cli import main
from datajobs.store import Store
from tests.datajobs.helpers import cli, error_line


def test_esearch_history_then_batched_efetch(tmp_path, replay, config, monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", "secret-test-key")
    root = str(tmp_path)
    assert main(["run", "ncbi", "--root", root, "--config", str(config())]) == 0
    search, *fetches = replay.requests
    assert search.path == "/ncbi/esearch.fcgi" and search.query["usehistory"] == ["y"]
    assert [f.query["retstart"][0] for f in fetches] == ["0", "3"]
    assert {f.query["WebEnv"][0] for f in fetches} == {"MCID_6927d6e7fee3e90f880ec190"}
    assert all(f.query["api_key"] == ["secret-test-key"] for f in replay.requests)
    version = Store(root).open("ncbi@latest")
    assert "secret-test-key" not in (tmp_path / "datasets" / "ncbi" / version.version / "manifest.json").read_text()
    records = version.read_table("records.parquet")
    assert records["accession"].to_pylist() == [
        "X55053.1",
        "X62281.1",
        "M81224.1",
        "AJ237582.1",
        "L31939.1",
        "AF297471.1",
    ]
    first = records.to_pylist()[0]
    assert first["organism"] == "Arabidopsis thaliana" and first["taxon_id"] == 3702 and first["length"] == 513
    assert len(first["sequence"]) == 513
    features = version.read_table("features.parquet")
    assert "CDS" in features["type"].to_pylist()


def test_truncated_efetch_publishes_nothing(tmp_path, replay, config, capsys):
    replay.fail_always("/ncbi/efetch.fcgi", "truncate")
    assert main(["run", "ncbi", "--root", str(tmp_path), "--config", str(config())]) == 1
    assert Store(str(tmp_path)).latest("ncbi") is None
    assert "failed after 3 attempts" in capsys.readouterr().err


def test_api_key_never_in_error_lines(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "ncbi:\n  eutils_url: http://127.0.0.1:9/eutils\n  http: {max_attempts: 2, backoff_initial_s: 0.01}\n"
    )
    proc = cli("run", "ncbi", "--config", str(cfg), "--root", str(tmp_path), env={"NCBI_API_KEY": "secret-test-key"})
    assert proc.returncode == 1 and "failed after 2 attempts" in error_line(proc)
    assert "api_key=***" in proc.stderr and "secret-test-key" not in proc.stderr + proc.stdout
