"""`astrobio-train predict` and `evaluate` as a user runs them: files in and out, invalid rows, other versions."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from tests.conftest import BIN, cli_env, run_cli
from tests.trainer.bundle_helpers import held_out, rmse_dex

TRAIN = str(BIN / "astrobio-train")


def test_predict_on_the_held_out_csv_reproduces_the_report_rmse(bundle_run: Path, tmp_path: Path) -> None:
    _, _, table = held_out(bundle_run)
    pcsv.write_csv(table, tmp_path / "held_out.csv")
    result = run_cli([TRAIN, "predict", "-m", str(bundle_run), "--input", str(tmp_path / "held_out.csv"),
                      "--output", str(tmp_path / "out.csv")])
    assert result.returncode == 0, result.stderr
    out = pcsv.read_csv(tmp_path / "out.csv")
    assert out.column_names[: table.num_columns] == table.column_names  # every input column kept, in order
    assert {"pl_bmasse_pred", "pl_bmasse_lo68", "pl_bmasse_hi95", "in_training_domain",
            "domain_note"} <= set(out.column_names)
    got = rmse_dex(out.column("pl_bmasse_pred").to_numpy(), out.column("pl_bmasse").to_numpy())
    report = (bundle_run / "report.md").read_text()
    assert f"| test_rmse_dex | {got:.4f} |" in report, (got, re.findall(r"test_rmse_dex.*", report))
    metrics = json.loads((bundle_run / "best" / "bundle.json").read_text())["metrics"]
    assert abs(got - metrics["test_rmse_dex"]) < 1e-9


def test_invalid_rows_exit_2_one_line_each_and_skip_invalid_writes_them_empty(bundle_run: Path,
                                                                              tmp_path: Path) -> None:
    _, _, table = held_out(bundle_run)
    good = table.slice(0, 5).drop_columns(["pl_bmasse"]).to_pylist()
    bad = [{**good[0], "pl_rade": -1.0}, {**good[1], "pl_rade": float("nan")}, {**good[2], "st_teff": "hot"}]
    rows = [good[0], bad[0], good[1], bad[1], good[2], bad[2], {**good[3], "st_met": None}, good[4]]
    text = pcsv.write_csv(pa.Table.from_pylist([{k: None if v is None else str(v) for k, v in r.items()}
                                                for r in rows]), path := tmp_path / "mixed.csv") or path
    refused = run_cli([TRAIN, "predict", "-m", str(bundle_run), "--input", str(text), "--output",
                       str(tmp_path / "never.csv")])
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("row ")]
    assert [line.split(":")[0] for line in lines] == ["row 2", "row 4", "row 6"], refused.stderr
    assert "pl_rade=-1.0" in lines[0] and "must be above 0 Earth radii" in lines[0]
    assert "NaN" in lines[1] and "st_teff='hot': not a number" in lines[2]
    assert not (tmp_path / "never.csv").exists()

    skipped = subprocess.run([TRAIN, "predict", "-m", str(bundle_run), "--input", "-", "--output", "-",
                              "--skip-invalid"], input=text.read_bytes(), capture_output=True, env=cli_env(),
                             timeout=300)
    assert skipped.returncode == 0, skipped.stderr.decode()
    assert "3 invalid row(s) written with empty predictions" in skipped.stderr.decode()
    out = pcsv.read_csv(pa.BufferReader(skipped.stdout))
    pred = out.column("pl_bmasse_pred").to_pylist()
    assert [p is None for p in pred] == [False, True, False, True, False, True, False, False]
    assert all(p > 0 for p in pred if p is not None)


def test_evaluate_on_a_second_version_and_refuse_one_without_what_it_needs(bundle_run: Path,
                                                                          tmp_path: Path) -> None:
    root = tmp_path / "data"
    subset = Path(__file__).resolve().parents[1] / "fixtures" / "oec" / "open_exoplanet_catalogue_head300.csv"
    subprocess.run([BIN / "astrobio-data", "run", "exoplanet-catalogue", "--from-file", str(subset), "--root",
                    str(root)], check=True, capture_output=True, env=cli_env())
    version = "exoplanet-catalogue@" + (root / "datasets" / "exoplanet-catalogue" / "LATEST").read_text().strip()
    trained_on = json.loads((bundle_run / "best" / "bundle.json").read_text())["lineage"]
    assert version not in [v["version"] for v in trained_on.values()]
    result = run_cli([TRAIN, "evaluate", "-m", str(bundle_run), "--data", version, "--root", str(root),
                      "--out", str(tmp_path / "eval")])
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"| evaluated on | {version} |" in report and "| RMSE C&K |" in report  # the baseline beside it
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["data"] == version and np.isfinite(metrics["metrics"]["test_rmse_dex"])

    subprocess.run([BIN / "astrobio-data", "run", "nasa-exoplanets", "--from-snapshot", "--root", str(root)],
                   check=True, capture_output=True, env=cli_env())
    refused = run_cli([TRAIN, "evaluate", "-m", str(bundle_run), "--data", "nasa-exoplanets", "--root", str(root),
                       "--out", str(tmp_path / "eval-nasa")])
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "mass provenance unknown" in lines[0], refused.stderr
