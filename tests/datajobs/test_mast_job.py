"""mast: name lookup -> CAOM search -> product list -> download of the chosen product into spectra.parquet."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from datajobs.cli import main
from datajobs.store import Store


def test_metadata_and_spectrum_download(tmp_path, replay, config):
    root = str(tmp_path)
    assert main(["run", "mast", "--root", root, "--config", str(config())]) == 0
    services = [json.loads(r.query["request"][0])["service"] for r in replay.requests if r.method == "POST"]
    assert services == ["Mast.Name.Lookup", "Mast.Caom.Filtered.Position", "Mast.Caom.Products"]
    position = json.loads(replay.requests[1].query["request"][0])["params"]["position"]
    assert position.startswith("124.531756290083, -68.3129998725044")  # L 98-59 from the resolver
    version = Store(root).open("mast@latest")
    observations = version.read_table("observations.parquet")
    assert observations.num_rows == 19 and set(observations["target"].to_pylist()) == {"L 98-59"}
    assert version.read_table("products.parquet").num_rows == 23
    spectrum = version.read_table("spectra.parquet")
    assert spectrum.num_rows == 143
    assert set(spectrum["quantity"].to_pylist()) == {"dppm"}
    assert 0.6 < pc.min(spectrum["wavelength"]).as_py() < pc.max(spectrum["wavelength"]).as_py() < 3.0
