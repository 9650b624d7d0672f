"""Retrieval network vs dynesty on the same spectra: KS distance per parameter, coverage, speed, WASP-39b corner.

    python -m bench.spectrum_sampler sample --root DATA --out DIR [--n-test 3]   # dynesty, slow
    python -m bench.spectrum_sampler compare --model RUN --root DATA --out DIR     # network, fast; writes DIR/*.md
        [--report-dir DIR2]  # write the tables and figures there instead of DIR
        [--importance N]  # also the network's N proposals reweighted by the forward model (slower)
    python -m bench.spectrum_sampler agreement --reference DIR --other DIR2   # dynesty vs dynesty (another seed
        or more live points) on the spectra both hold: the KS noise of the reference itself
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from datajobs.forward_model import SNAPSHOT
from datajobs.sources.spectra_sim import PARAMETERS, instrument_bins
from datajobs.store import Store, write_local_atomic

WASP39B_CSV = SNAPSHOT / "wasp39b_jwst_prism_g395h.csv"
SO2 = (3.9, 4.2)


def wasp39b_name(error_scale: float) -> str:
    return "wasp39b" if error_scale == 1 else f"wasp39b-errx{error_scale:g}"


def wasp39b_prism(error_scale: float = 1.0) -> dict[str, np.ndarray]:
    """PRISM points of the real spectrum, without the SO2 range (not in the forward model); error bars times
    `error_scale`."""
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(WASP39B_CSV).to_pydict()
    wl, hw = np.array(t["wavelength_um"]), np.array(t["half_width_um"])
    keep = (np.array(t["instrument"]) == "nirspec_prism") & ~((wl >= SO2[0]) & (wl <= SO2[1]))
    return {"wavelength_um": wl[keep], "half_width_um": hw[keep], "depth": np.array(t["depth_ppm"])[keep] * 1e-6,
            "error": np.array(t["error_ppm"])[keep] * 1e-6 * error_scale}


def test_spectra(root: str, n: int, split_seed: int = 0, val: float = 0.1, test: float = 0.1) -> list[dict]:
    """The first n held-out (test-split) simulated PRISM-only spectra of spectra-sim@latest."""
    from trainer.components.spectrum import split_of

    version = Store(root).open("spectra-sim@latest")
    shards = sorted(s for s in version.shards("npz") if s.startswith("spectra-"))
    with np.load(io.BytesIO(version.read_bytes(shards[0])), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sim = version.read_json("simulation.json")
    bins = instrument_bins(sim["modes"])
    # sets made before mode_sets existed index `modes` directly, one mode per spectrum
    prism_only = sim.get("mode_sets", [[m] for m in sim["modes"]]).index(["prism"])
    out = []
    for i in range(len(arrays["params"])):
        if len(out) >= n:
            break
        if split_of(i, split_seed, val, test) == "test" and arrays["mode"][i] == prism_only:
            m = arrays["mask"][i]
            out.append({"index": i, "params": arrays["params"][i], "wavelength_um": bins["wavelength_um"][m],
                        "half_width_um": bins["half_width_um"][m], "depth": arrays["depth"][i][m],
                        "error": arrays["error"][i][m]})
    return out


def cmd_sample(args: argparse.Namespace) -> None:
    from trainer.sampler_baseline import run_sampler

    args.out.mkdir(parents=True, exist_ok=True)
    priors = Store(args.root).open("spectra-sim@latest").read_json("simulation.json")["priors"]
    targets = [] if args.no_wasp39b else [(wasp39b_name(args.wasp39b_error_scale),
                                           wasp39b_prism(args.wasp39b_error_scale), None)]
    targets += [
        (f"test-{s['index']}", s, s["params"]) for s in test_spectra(args.root, args.n_test)]
    for name, spec, truth in targets:
        path = args.out / f"sampler-{name}.npz"
        if path.is_file():
            continue
        r = run_sampler(spec["wavelength_um"], spec["half_width_um"], spec["depth"], spec["error"],
                        priors={k: tuple(v) for k, v in priors.items()}, n_layers=args.n_layers, nlive=args.nlive,
                        dlogz=args.dlogz, bootstrap=args.bootstrap, seed=args.seed, sample=args.sample)
        settings = {"nlive": args.nlive, "dlogz": args.dlogz, "bootstrap": args.bootstrap, "sample": args.sample,
                    "seed": args.seed, "n_layers": args.n_layers}
        buf = io.BytesIO()  # written whole or not at all: a killed run leaves no half file for a rerun to skip
        np.savez(buf, samples=r.samples, seconds=r.seconds, calls=r.likelihood_calls, logz=r.log_evidence,
                 truth=np.full(len(PARAMETERS), np.nan) if truth is None else truth,
                 settings=np.array(json.dumps(settings)))
        write_local_atomic(path, buf.getvalue())
        print(f"{name}: {r.seconds:.0f} s, {r.likelihood_calls} likelihood calls", flush=True)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def width_and_shift(net: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per parameter: the network's posterior standard deviation over the sampler's, and the distance between
    their means in units of the sampler's standard deviation. KS mixes the two; these say which one it is."""
    ref_std = ref.std(axis=0) + 1e-12
    return net.std(axis=0) / ref_std, np.abs(net.mean(axis=0) - ref.mean(axis=0)) / ref_std


def truth_inside(samples: np.ndarray, truth: np.ndarray, level: int) -> np.ndarray:
    """Per parameter: whether the true value lies inside the samples' central `level`% interval."""
    lo, hi = np.percentile(samples, [50 - level / 2, 50 + level / 2], axis=0)
    return (truth >= lo) & (truth <= hi)


def held_out_inputs(root: str, comp, n: int, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Network inputs and true parameters of the first n spectra of a split ("test", or "val" for choosing
    settings; any mode set) of the first shard of spectra-sim@latest."""
    from trainer.components.spectrum import split_of

    version = Store(root).open("spectra-sim@latest")
    shards = sorted(s for s in version.shards("npz") if s.startswith("spectra-"))
    with np.load(io.BytesIO(version.read_bytes(shards[0])), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    idx = [i for i in range(len(a["params"])) if split_of(i, 0, 0.1, 0.1) == split][:n]
    return comp.features(a["depth"][idx], a["error"][idx], a["mask"][idx].astype(bool)), a["params"][idx]


def calibration(root: str, comp, model, out: Path, n: int = 200) -> list[str]:
    """Coverage of central intervals at several levels on held-out simulated spectra, as a PNG and a table."""
    import matplotlib.pyplot as plt
    import torch

    x, truth = held_out_inputs(root, comp, n)
    samples = np.concatenate([comp.posterior(model, x[i:i + 50], 500, torch.device("cpu"), seed=i)
                              for i in range(0, len(x), 50)])
    levels = np.array([10, 20, 30, 40, 50, 60, 68, 80, 90, 95])
    cov = np.zeros((len(levels), len(comp.parameters)))
    for li, lev in enumerate(levels):
        lo, hi = np.percentile(samples, [50 - lev / 2, 50 + lev / 2], axis=1)
        cov[li] = ((truth >= lo) & (truth <= hi)).mean(axis=0)
    fig, ax = plt.subplots(figsize=(5, 5))
    for j, p in enumerate(comp.parameters):
        ax.plot(levels / 100, cov[:, j], marker=".", label=p)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("nominal central-interval level")
    ax.set_ylabel(f"share of true values inside ({len(x)} held-out spectra)")
    ax.legend(fontsize=7)
    fig.savefig(out / "calibration.png", dpi=90)
    plt.close(fig)
    rows = ["| parameter | 68% coverage | 95% coverage |", "|---|---|---|"]
    rows += [f"| {p} | {cov[6, j]:.3f} | {cov[9, j]:.3f} |" for j, p in enumerate(comp.parameters)]
    return [f"### Calibration on {len(x)} held-out simulated spectra", "", *rows, "",
            "![calibration](calibration.png)", ""]


def importance_calibration(root: str, comp, model, n_spectra: int, proposals: int, split: str = "test",
                           widen: float = 1.0) -> list[str]:
    """Coverage of the importance-sampled posterior's central 68%/95% intervals on held-out simulated spectra
    (the calibration set's first n_spectra), beside the network's own on the same spectra, and split by whether
    the effective sample size reached the level below which predict warns."""
    import torch

    from trainer.components.spectrum_importance import MIN_EFFECTIVE_SAMPLES

    x, truth = held_out_inputs(root, comp, n_spectra, split)
    hits: dict[str, list[np.ndarray]] = {"is68": [], "is95": [], "net95": []}
    effective = []
    for k in range(len(x)):
        r = comp.importance_posterior(model, x[k:k + 1], proposals, 1000, torch.device("cpu"), seed=k, widen=widen)
        effective.append(r.effective_samples)
        hits["is68"].append(truth_inside(r.samples, truth[k], 68))
        hits["is95"].append(truth_inside(r.samples, truth[k], 95))
        hits["net95"].append(truth_inside(comp.posterior(model, x[k:k + 1], 1000, torch.device("cpu"), seed=k)[0],
                                    truth[k], 95))
    enough = np.array(effective) >= MIN_EFFECTIVE_SAMPLES
    cov = {key: np.array(v, float) for key, v in hits.items()}

    def share(key: str, rows: np.ndarray, j: int) -> str:
        return f"{cov[key][rows, j].mean():.3f}" if rows.any() else "-"

    everyone = np.ones(len(x), bool)
    rows = [f"| parameter | IS 68% | IS 95% | IS 95%, >= {MIN_EFFECTIVE_SAMPLES} effective ({int(enough.sum())}) | "
            f"IS 95%, fewer ({int((~enough).sum())}) | network alone 95% |", "|---|---|---|---|---|---|"]
    rows += [f"| {p} | {share('is68', everyone, j)} | {share('is95', everyone, j)} | {share('is95', enough, j)} | "
             f"{share('is95', ~enough, j)} | {share('net95', everyone, j)} |" for j, p in enumerate(comp.parameters)]
    return [f"### Calibration of the importance-sampled posterior on {len(x)} {split}-split simulated spectra "
            f"({proposals} proposals each, proposal widened x{widen:g})", "", *rows, "",
            f"Effective samples: median {np.median(effective):.0f}, min {np.min(effective):.0f}, max "
            f"{np.max(effective):.0f} of {proposals}.", ""]


def cmd_compare(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from trainer.bundle import load_bundle

    bundle = load_bundle(args.model, "cpu")
    comp = bundle.component
    args.report_dir = args.report_dir or args.out
    args.report_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| spectrum | " + " | ".join(comp.parameters) + " | mean KS | sampler s | network s |",
             "|---|" + "---|" * (len(comp.parameters) + 3)]
    ks_all, overlap_rows, speed, names = [], [], [], []
    shape_lines = ["| spectrum | " + " | ".join(comp.parameters) + " | width ratio (geo. mean) | mean shift |",
                   "|---|" + "---|" * (len(comp.parameters) + 2)]
    shapes: list[dict] = []
    inside: dict[str, list[np.ndarray]] = {f"{who}{level}": [] for who in ("sampler", "network") for level in (68, 95)}
    importance: list[dict] = []
    is_lines = ["| spectrum | " + " | ".join(comp.parameters) + " | mean KS | effective samples | log Z (IS / "
                "dynesty) | IS s |", "|---|" + "---|" * (len(comp.parameters) + 4)]
    for path in sorted(args.out.glob("sampler-*.npz")):
        name = path.stem.removeprefix("sampler-")
        with np.load(path, allow_pickle=False) as z:
            ref, seconds, logz, truth = z["samples"], float(z["seconds"]), float(z["logz"]), z["truth"]
        scale = float(name.removeprefix("wasp39b-errx")) if name.startswith("wasp39b-errx") else 1.0
        spec = wasp39b_prism(scale) if name.startswith("wasp39b") else next(
            s for s in test_spectra(args.root, 50) if f"test-{s['index']}" == name)
        csv = args.report_dir / f"{name}.csv"
        with open(csv, "w") as f:
            f.write("wavelength_um,depth,error\n")
            for w, d, e in zip(spec["wavelength_um"], spec["depth"], spec["error"], strict=True):
                f.write(f"{w},{d},{e}\n")
        x, _ = comp.read_spectrum(str(csv), [])
        comp.posterior(bundle.model, x, 10, torch.device("cpu"))  # warm-up
        t0 = time.perf_counter()
        net = comp.posterior(bundle.model, x, 1000, torch.device("cpu"))[0]
        net_s = time.perf_counter() - t0
        ks = [ks_distance(net[:, j], ref[:, j]) for j in range(len(comp.parameters))]
        ks_all.append(ks)
        names.append(name)
        speed.append((seconds, net_s))
        lines.append(f"| {name} | " + " | ".join(f"{k:.2f}" for k in ks) + f" | {np.mean(ks):.2f} | {seconds:.0f} | "
                     f"{net_s:.3f} |")
        if np.isfinite(truth).all():
            for level in (68, 95):
                inside[f"sampler{level}"].append(truth_inside(ref, truth, level))
                inside[f"network{level}"].append(truth_inside(net, truth, level))
        width, shift = width_and_shift(net, ref)
        shapes.append({"name": name, "width_ratio": width.tolist(), "mean_shift": shift.tolist()})
        shape_lines.append(f"| {name} | " + " | ".join(f"{w:.2f} / {d:.2f}" for w, d in zip(width, shift, strict=True))
                           + f" | {np.exp(np.log(width).mean()):.2f} | {shift.mean():.2f} |")
        if args.importance:
            r = comp.importance_posterior(bundle.model, x, args.importance, 1000, torch.device("cpu"),
                                          widen=args.importance_widen)
            ks_is = [ks_distance(r.samples[:, j], ref[:, j]) for j in range(len(comp.parameters))]
            importance.append({"name": name, "ks": ks_is, "effective_samples": r.effective_samples,
                               "seconds": r.seconds, "log_evidence": r.log_evidence, "sampler_log_evidence": logz,
                               "sampler_seconds": seconds})
            is_lines.append(f"| {name} | " + " | ".join(f"{k:.2f}" for k in ks_is) + f" | {np.mean(ks_is):.2f} | "
                            f"{r.effective_samples:.0f} | {r.log_evidence:.1f} / {logz:.1f} | {r.seconds:.1f} |")
        if name.startswith("wasp39b"):
            n95 = np.percentile(net, [2.5, 97.5], axis=0)
            s95 = np.percentile(ref, [2.5, 97.5], axis=0)
            i95 = np.percentile(r.samples, [2.5, 97.5], axis=0) if args.importance else None
            for j, p in enumerate(comp.parameters):
                overlap = bool(n95[0, j] <= s95[1, j] and s95[0, j] <= n95[1, j])
                with_is = "" if i95 is None else f" {i95[0, j]:.2f} .. {i95[1, j]:.2f} |"
                overlap_rows.append(f"| {name} | {p} | {n95[0, j]:.2f} .. {n95[1, j]:.2f} | {s95[0, j]:.2f} .. "
                                    f"{s95[1, j]:.2f} | {'yes' if overlap else 'no'} |{with_is}")
            k = len(comp.parameters)
            fig, axes = plt.subplots(k, k, figsize=(2 * k, 2 * k))
            for a in range(k):
                for b in range(k):
                    ax = axes[a, b]
                    if b > a:
                        ax.axis("off")
                        continue
                    if a == b:
                        ax.hist(ref[:, a], 30, density=True, histtype="step", color="k", label="dynesty")
                        ax.hist(net[:, a], 30, density=True, histtype="step", color="C0", label="network")
                        if args.importance:
                            ax.hist(r.samples[:, a], 30, density=True, histtype="step", color="C3",
                                    label="network + IS")
                    else:
                        ax.scatter(ref[:, b], ref[:, a], s=1, c="k", alpha=0.3)
                        ax.scatter(net[:, b], net[:, a], s=1, c="C0", alpha=0.3)
                        if args.importance:
                            ax.scatter(r.samples[:, b], r.samples[:, a], s=1, c="C3", alpha=0.3)
                    if a == k - 1:
                        ax.set_xlabel(comp.parameters[b], fontsize=7)
                    if b == 0 and a > 0:
                        ax.set_ylabel(comp.parameters[a], fontsize=7)
                    ax.tick_params(labelsize=5)
            axes[0, 0].legend(fontsize=6)
            errors = "" if scale == 1 else f", error bars x{scale:g}"
            fig.suptitle(f"WASP-39b, NIRSpec PRISM (3.9-4.2 um masked{errors}): network (blue)"
                         + (", network + IS (red)" if args.importance else "") + " vs dynesty (black)")
            fig.savefig(args.report_dir / f"{name}_corner.png", dpi=90)
            plt.close(fig)
    ks_mean = float(np.mean(ks_all)) if ks_all else float("nan")
    simulated = [k for k, n in zip(ks_all, names, strict=True) if n.startswith("test-")]
    ks_sim = float(np.mean(simulated)) if simulated else float("nan")
    md = ["## Network vs nested sampling (dynesty, same forward model and priors)", "",
          f"Network: {args.model}.", "", *lines, "",
          f"Mean KS distance over spectra and parameters: {ks_mean:.3f} (goal < 0.2); over the simulated spectra "
          f"only: {ks_sim:.3f}.", "",
          "Posterior width and location, network against dynesty, per parameter: standard deviation ratio / "
          "distance between the means in dynesty standard deviations (1.00 / 0.00 would be the same).", "",
          *shape_lines, ""]
    if inside["sampler68"]:
        values = len(inside["sampler68"]) * len(comp.parameters)
        share = {k: int(np.sum(v)) for k, v in inside.items()}
        md += [f"True values inside the central intervals, over the {len(inside['sampler68'])} simulated spectra x "
               f"{len(comp.parameters)} parameters (a calibrated posterior holds about 68% and 95% of them; "
               "this checks the reference as much as the network):", "",
               "| posterior | inside 68% | inside 95% |", "|---|---|---|",
               *(f"| {who} | {share[who + '68']} / {values} | {share[who + '95']} / {values} |"
                 for who in ("sampler", "network")), ""]
    if speed:
        ratio = np.mean([s / n for s, n in speed])
        md.append(f"Speed: sampler {np.mean([s for s, _ in speed]):.0f} s per spectrum vs network "
                  f"{np.mean([n for _, n in speed]):.3f} s for 1000 samples: {ratio:,.0f}x.")
    if importance:
        sim_is = [r["ks"] for r in importance if r["name"].startswith("test-")]
        ratio_is = np.mean([r["sampler_seconds"] / r["seconds"] for r in importance])
        md += ["", f"### Network + importance sampling ({args.importance} proposals reweighted by the forward "
               "model, 1000 resampled)", "", *is_lines, "",
               f"Mean KS: {np.mean([r['ks'] for r in importance]):.3f}; over the simulated spectra only: "
               f"{np.mean(sim_is) if sim_is else float('nan'):.3f}. Speed vs the sampler: {ratio_is:,.0f}x."]
    md += ["", *calibration(args.root, comp, bundle.model, args.report_dir)]
    if args.importance_coverage:
        md += importance_calibration(args.root, comp, bundle.model, args.importance_coverage,
                                     args.importance_coverage_proposals, args.importance_coverage_split,
                                     args.importance_widen)
    if overlap_rows:
        corners = [f"![{p.stem}]({p.stem}_corner.png)" for p in sorted(args.out.glob("sampler-wasp39b*.npz"))]
        md += ["", "### WASP-39b 95% intervals", "", "| target | parameter | network | dynesty | overlap |"
               + (" network + IS |" if importance else ""), "|---|---|---|---|---|" + ("---|" if importance else ""),
               *overlap_rows, "", *[c.replace("sampler-", "") for c in corners]]
    write_local_atomic(args.report_dir / "sampler_comparison.md", ("\n".join(md) + "\n").encode())
    summary = {"model": str(args.model), "ks_mean": ks_mean, "ks_simulated": ks_sim, "names": names,
               "ks": ks_all, "shape": shapes, "truth_inside": {k: int(np.sum(v)) for k, v in inside.items()},
               "speed": speed, "importance": importance}
    write_local_atomic(args.report_dir / "sampler_comparison.json", (json.dumps(summary) + "\n").encode())
    print("\n".join(md))


def cmd_agreement(args: argparse.Namespace) -> None:
    """KS per parameter between two sampler runs of the same spectra; writes OTHER/agreement.md and .json."""
    rows, table = [], []
    for path in sorted(args.reference.glob("sampler-*.npz")):
        other = args.other / path.name
        if not other.is_file():
            continue
        with np.load(path, allow_pickle=False) as a, np.load(other, allow_pickle=False) as b:
            ks = [ks_distance(a["samples"][:, j], b["samples"][:, j]) for j in range(len(PARAMETERS))]
            calls = (int(a["calls"]), int(b["calls"]))
            logz = (float(a["logz"]), float(b["logz"]))
        name = path.stem.removeprefix("sampler-")
        rows.append({"name": name, "ks": ks, "calls": calls, "logz": logz})
        table.append(f"| {name} | " + " | ".join(f"{k:.2f}" for k in ks) + f" | {np.mean(ks):.3f} | {calls[0]} / "
                     f"{calls[1]} | {logz[0]:.1f} / {logz[1]:.1f} |")
    if not rows:
        raise SystemExit(f"no sampler-*.npz in both {args.reference} and {args.other}: run `sample` into both")
    md = [f"## dynesty vs dynesty: {args.reference} vs {args.other}", "",
          "| spectrum | " + " | ".join(PARAMETERS) + " | mean KS | likelihood calls | log Z |",
          "|---|" + "---|" * (len(PARAMETERS) + 3), *table, "",
          f"Mean KS over {len(rows)} spectra: {np.mean([r['ks'] for r in rows]):.3f}."]
    (args.other / "agreement.md").write_text("\n".join(md) + "\n")
    (args.other / "agreement.json").write_text(json.dumps(rows) + "\n")
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--root", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n-test", type=int, default=3)
    s.add_argument("--n-layers", type=int, default=50)
    s.add_argument("--nlive", type=int, default=100)
    s.add_argument("--dlogz", type=float, default=1.0)
    s.add_argument("--bootstrap", type=int, default=None, help="dynesty bootstraps (0: fixed enlargement)")
    s.add_argument("--seed", type=int, default=0, help="dynesty's random state (live points and resampling)")
    s.add_argument("--sample", choices=("auto", "unif", "rwalk", "slice", "rslice"), default="auto",
                   help="dynesty's proposal method (auto = unif in 7 dimensions; rslice does not trust the bound)")
    s.add_argument("--no-wasp39b", action="store_true", help="only the simulated test spectra")
    s.add_argument("--wasp39b-error-scale", type=float, default=1.0,
                   help="multiply the real spectrum's error bars (the network gets the same spectrum)")
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True, help="a trained spectrum run (model.members > 1: its mixture)")
    c.add_argument("--report-dir", type=Path, default=None,
                   help="where the tables and figures go (default: --out, beside the sampler runs)")
    c.add_argument("--root", required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--importance", type=int, default=0,
                   help="also reweight N network proposals per spectrum by the forward model and compare")
    c.add_argument("--importance-coverage", type=int, default=0,
                   help="coverage of the importance-sampled posterior on this many held-out spectra")
    c.add_argument("--importance-coverage-proposals", type=int, default=1000)
    c.add_argument("--importance-coverage-split", choices=("test", "val"), default="test")
    c.add_argument("--importance-widen", type=float, default=1.0,
                   help="widen the flow's base distribution by this factor for the proposals")
    a = sub.add_parser("agreement")
    a.add_argument("--reference", type=Path, required=True, help="a `sample` output folder")
    a.add_argument("--other", type=Path, required=True, help="another one, of the same spectra")
    args = parser.parse_args()
    {"sample": cmd_sample, "compare": cmd_compare, "agreement": cmd_agreement}[args.cmd](args)


if __name__ == "__main__":
    main()
