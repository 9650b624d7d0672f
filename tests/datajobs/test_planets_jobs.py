"""nasa-exoplanets and exoplanet-catalogue: snapshot imports, live jobs against the replay server, faults."""

from __future__ import annotations

import fsspec
import pyarrow.compute as pc
import pytest

from datajobs import planets
from datajobs.cli import main
from datajobs.store import Store
from tests.datajobs.helpers import cli, error_line

NASA_FIXTURE_ROWS = 300


def run(*args: str) -> int:
    return main(["run", *args])


@pytest.mark.parametrize("source", ["nasa-exoplanets", "exoplanet-catalogue"])
def test_snapshot_publishes_normalized_planets(tmp_path, source):
    root = str(tmp_path / "data")
    assert run(source, "--from-snapshot", "--root", root) == 0
    version = Store(root).open(f"{source}@latest")
    table = version.read_table(planets.SHARD)
    assert table.schema == planets.SCHEMA
    assert version.manifest["source"]["kind"] == "snapshot"
    assert version.manifest["source"]["provenance"].startswith("# ")
    assert version.manifest["recreate_command"] == f"astrobio-data run {source} --from-snapshot"
    card = version.read_bytes("CARD.md").decode()
    quarantined = version.read_table("quarantine.parquet")
    assert quarantined.num_rows == version.manifest["quarantine"]["rows"]
    assert table.num_rows + quarantined.num_rows == (6053 if source == "nasa-exoplanets" else 5414)
    assert pc.min(table["pl_rade"]).as_py() > 0
    if source == "nasa-exoplanets":
        assert table["pl_bmassprov"].null_count == table.num_rows  # the snapshot lacks provenance
        assert table["catalogue_list"].null_count == table.num_rows
        assert "no pl_bmassprov, tran_flag or uncertainty columns" in card
        assert table["tran_flag"].null_count == table.num_rows
    else:
        with_mass = table.filter(pc.is_valid(table["pl_bmasse"]))
        assert set(with_mass["pl_bmassprov"].to_pylist()) == {"literature (OEC)"}
        assert "Radial Velocity" in table["discoverymethod"].to_pylist()
        assert "pl_insol is computed" in card
        row = table.filter(pc.equal(table["pl_name"], "Kepler-82 f")).to_pylist()[0]
        assert row["hostname"] == "Kepler-82"
        # Physically impossible hosts are quarantined with the reason, never published.
        bad = {r["pl_name"]: r["reason"] for r in quarantined.select(["pl_name", "reason"]).to_pylist()}
        assert "st_teff outside [250, 200000] K" in bad["TOI-3540 b"]  # OEC gives Teff = 58.65 K
        assert "st_met outside [-5, 1.5] dex" in bad["TOI-1408 b"]  # OEC gives [Fe/H] = +7.79
        assert "TOI-3540 b" not in table["pl_name"].to_pylist()
        assert "st_teff outside" in card


def test_live_tap_job_publishes_and_reruns_unchanged(root, replay, config):
    cfg = str(config())
    assert run("nasa-exoplanets", "--root", root, "--config", cfg) == 0
    store = Store(root)
    first = store.open("nasa-exoplanets@latest")
    table = first.read_table(planets.SHARD)
    assert table.num_rows + first.manifest["quarantine"]["rows"] == NASA_FIXTURE_ROWS
    query = first.manifest["source"]["query"]
    for column in ("pl_bmassprov", "tran_flag", "pl_radeerr1", "pl_radeerr2", "pl_bmasseerr1", "pl_bmasseerr2"):
        assert column in query
    request = replay.requests[-1]
    assert request.path == "/TAP/sync" and request.query["format"] == ["csv"]
    assert "from pscomppars" in request.query["query"][0]
    assert request.headers["User-Agent"].startswith("astrobio-train-datajobs/")

    assert run("nasa-exoplanets", "--root", root, "--config", cfg) == 0
    assert store.versions("nasa-exoplanets") == [first.version]
    assert replay.count("/TAP/sync") == 2


def test_ps_table_query_uses_default_flag(tmp_path, replay, config):
    assert (
        run("nasa-exoplanets", "--root", str(tmp_path), "--config", str(config(nasa_exoplanets={"table": "ps"}))) == 0
    )
    assert "from ps where default_flag = 1" in replay.requests[-1].query["query"][0]


@pytest.mark.parametrize("faults", [("500",), ("503", "500"), ("slow",), ("reset",), ("truncate",)])
def test_transient_faults_are_retried(tmp_path, replay, config, faults):
    replay.fail("/TAP/sync", *faults)
    assert run("nasa-exoplanets", "--root", str(tmp_path), "--config", str(config())) == 0
    assert replay.count("/TAP/sync") == len(faults) + 1
    assert Store(str(tmp_path)).latest("nasa-exoplanets") is not None


def test_429_waits_for_retry_after(tmp_path, replay, config):
    replay.retry_after_s = 1
    replay.fail("/TAP/sync", "429")
    assert run("nasa-exoplanets", "--root", str(tmp_path), "--config", str(config())) == 0
    first, second = (r.received for r in replay.requests if r.path == "/TAP/sync")
    assert second - first >= 1.0  # the server's clock: the backoff alone would be ~0.05-0.1 s


@pytest.mark.parametrize("fault", ["truncate", "500", "reset"])
def test_persistent_fault_publishes_nothing_and_keeps_previous(root, replay, config, fault, capsys):
    cfg = str(config())
    assert run("nasa-exoplanets", "--root", root, "--config", cfg) == 0
    store = Store(root)
    before = store.versions("nasa-exoplanets")
    replay.fail_always("/TAP/sync", fault)
    assert run("nasa-exoplanets", "--root", root, "--config", cfg) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "failed after 3 attempts" in err[0]
    assert store.versions("nasa-exoplanets") == before
    assert store.latest("nasa-exoplanets") == before[-1]
    assert store.open("nasa-exoplanets@latest").verify() == []


def test_conditional_request_unchanged_upstream_publishes_nothing(tmp_path, replay, config):
    cfg, root = str(config()), str(tmp_path)
    assert run("exoplanet-catalogue", "--root", root, "--config", cfg) == 0
    version = Store(root).open("exoplanet-catalogue@latest")
    assert version.manifest["source"]["validators"]["etag"]
    assert run("exoplanet-catalogue", "--root", root, "--config", cfg) == 0
    assert replay.requests[-1].headers.get("If-None-Match") == version.manifest["source"]["validators"]["etag"]
    assert Store(root).versions("exoplanet-catalogue") == [version.version]


def test_invalid_share_over_limit_is_refused(tmp_path, replay, config, capsys):
    cfg = str(config(exoplanet_catalogue={"max_invalid_share": 0.0}))
    assert run("exoplanet-catalogue", "--root", str(tmp_path), "--config", cfg) == 2
    err = capsys.readouterr().err
    assert "max_invalid_share" in err and "nothing published" in err
    assert Store(str(tmp_path)).latest("exoplanet-catalogue") is None


def test_file_missing_columns_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "not-planets.csv"
    bad.write_text("a,b\n1,2\n")
    assert run("nasa-exoplanets", "--from-file", str(bad), "--root", str(tmp_path / "d")) == 2
    assert "lacks column(s) pl_name" in capsys.readouterr().err


def test_corrupted_shard_fails_verify_on_both_roots(root, replay, config):
    assert run("nasa-exoplanets", "--root", root, "--config", str(config())) == 0
    version = Store(root).open("nasa-exoplanets@latest")
    fs, path = fsspec.core.url_to_fs(f"{version.url}/{planets.SHARD}")
    data = bytearray(fs.cat_file(path))
    data[-20] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    proc = cli("verify", "nasa-exoplanets@latest", "--root", root)  # a new process: env carries the S3 keys
    assert proc.returncode == 2
    assert "planets.parquet fails its checksum" in error_line(proc)


def test_wrong_s3_secret_is_one_line_exit_2(ceph, tmp_path):
    env = {**ceph.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = cli("run", "nasa-exoplanets", "--from-snapshot", "--root", "s3://astro-denied/root", env=env)
    assert proc.returncode == 2
    assert "check --root and the AWS_* variables" in error_line(proc)
