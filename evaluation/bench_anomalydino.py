"""Speed and memory of AnomalyDINO's few-shot search beside the backbone's own forward (README, RESULTS).

One configuration per process (so the peak resident memory is that configuration's):

    python evaluation/bench_anomalydino.py --k 16 [--backbone timm:vit_small_patch14_dinov2:random --size 448]

prints one JSON line (times: the fastest of ``--repeat`` runs): the backbone forward per test image, the exact search per image, the IVF index build and its
search per image at several probe counts (with the largest and mean deviation of the patch distances from the exact
ones, and how many patches deviate), faiss (``IndexFlatIP`` exact, ``IndexIVFFlat``) when installed, and the peak
resident memory. The bank holds ``K x 8`` rotated copies; its rows are real patch tokens of the backbone (random
weights: no weights can be downloaded here) on synthetic references, made from at most ``--distinct`` forwarded
references (the rest repeat them with a little noise, so large K costs no hour of forwards). ``--driver`` runs every
K in its own process and prints the Markdown table of ``evaluation/RESULTS.md``. ``--memory exact|ivf`` measures
only the peak resident memory of scoring one image through ``zsad.create`` (no benchmark copies of the bank):

    python evaluation/bench_anomalydino.py --memory ivf --k 64 --backbone timm:vit_large_patch14_dinov2:random \
        --size 518 --rotations 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _best_time(fn, repeat: int) -> float:
    """The fastest of ``repeat`` runs: the machine is shared, and the minimum is the least disturbed."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def run(k: int, backbone: str, size: int, distinct: int, repeat: int, probes: list[int]) -> dict:
    import zsad
    from zsad.data.synthetic import make_sample
    from zsad.methods.anomalydino.maps import mean_top
    from zsad.methods.anomalydino.search import PatchBank, nearest_cosine

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    refs = [make_sample("disc", None, size=size, rng=rng).image for _ in range(min(k, distinct))]
    test = make_sample("disc", "scratch", size=size, rng=rng).image
    det = zsad.create("anomalydino", backbone=backbone, image_size=size, references=refs, device="cpu",
                      precision="fp32", warn_random=False, calibration_images=1)
    method = det.method
    prepared = method.preprocess([test])
    forward = _best_time(lambda: method.extract(prepared), repeat)
    query = method.extract(prepared).tokens[0]
    base = method.bank.features
    copies = [base]
    gen = torch.Generator().manual_seed(1)
    while sum(c.shape[0] for c in copies) < k * 8 * query.shape[0]:
        copies.append(torch.nn.functional.normalize(base + 0.05 * torch.randn(base.shape, generator=gen), dim=1))
    rows = k * 8 * query.shape[0]
    feats = torch.cat(copies)[:rows].contiguous()
    del copies, base
    owner = torch.zeros(rows, dtype=torch.int32)
    bank = PatchBank(features=feats, owner=owner)
    method.bank = None
    exact = nearest_cosine(query, bank)
    out = {"k": k, "rows": rows, "backbone": backbone, "size": size, "forward_s": forward,
           "bank_mb": feats.numel() * 4 / 2**20,
           "exact_s": _best_time(lambda: nearest_cosine(query, bank), repeat), "exact_score": mean_top(exact),
           "exact_median_patch": float(exact.median())}
    start = time.perf_counter()
    indexed = PatchBank(features=feats, owner=owner)  # the index holds row numbers only
    indexed.index()
    out["ivf_build_s"] = time.perf_counter() - start
    out["ivf"] = {}
    for probe in probes:
        indexed.probe = probe
        got = nearest_cosine(query, indexed)
        dev = (got - exact).numpy()
        out["ivf"][probe] = {"s": _best_time(lambda b=indexed: nearest_cosine(query, b), repeat),
                             "score_dev": mean_top(got) - mean_top(exact),
                             "max_dev": float(dev.max()), "mean_dev": float(dev.mean()),
                             "share_dev": float((dev > 1e-6).mean()), "min_dev": float(dev.min())}
    del indexed
    try:
        import faiss

        flat = faiss.IndexFlatIP(feats.shape[1])
        flat.add(feats.numpy())
        q = torch.nn.functional.normalize(query, dim=1).numpy()
        out["faiss_flat_s"] = _best_time(lambda f=flat: f.search(q, 1), repeat)
        lists = int(round(rows ** 0.5))
        start = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(feats.shape[1]), feats.shape[1], lists,
                                 faiss.METRIC_INNER_PRODUCT)
        ivf.train(feats.numpy()[np.random.default_rng(0).permutation(rows)[:65536]])
        ivf.add(feats.numpy())
        out["faiss_ivf_build_s"] = time.perf_counter() - start
        ivf.nprobe = 16
        sims, _ = ivf.search(q, 1)
        out["faiss_ivf16_s"] = _best_time(lambda f=ivf: f.search(q, 1), repeat)
        out["faiss_ivf16_max_dev"] = float(((1 - sims[:, 0]) - exact.numpy()).max())
        del flat, ivf
    except ImportError:
        pass
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["threads"] = torch.get_num_threads()
    return out


def memory(k: int, backbone: str, size: int, distinct: int, search: str, rotations: int,
           bank_dtype: str = "fp32") -> dict:
    """Peak resident memory of scoring one image through ``zsad.create`` with a bank of ``k x rotations`` rows
    per patch grid (built in place from the forwarded references' tokens plus noise, as :func:`run`), ``search``
    ``exact`` or ``ivf``: the model, the bank (and index) and the search tiles, nothing the benchmark adds."""
    import zsad
    from zsad.data.synthetic import make_sample
    from zsad.methods.anomalydino.search import PatchBank

    rng = np.random.default_rng(0)
    refs = [make_sample("disc", None, size=size, rng=rng).image for _ in range(min(k, distinct))]
    test = make_sample("disc", "scratch", size=size, rng=rng).image
    det = zsad.create("anomalydino", backbone=backbone, image_size=size, references=refs, device="cpu",
                      precision="fp32", warn_random=False, calibration_images=1, rotation=False)
    method = det.method
    method._calibration[method.masking] = (1.0, 1.0)  # the calibration's searches are not what is measured
    base = method.bank.features
    per_image = base.shape[0] // len(refs)
    rows = k * rotations * per_image
    feats = torch.empty(rows, base.shape[1], dtype=torch.float16 if bank_dtype == "fp16" else torch.float32)
    gen = torch.Generator().manual_seed(1)
    for start in range(0, rows, base.shape[0]):
        stop = min(rows, start + base.shape[0])
        block = base[: stop - start] + (0.05 * torch.randn(stop - start, base.shape[1], generator=gen) if start else 0)
        feats[start:stop] = torch.nn.functional.normalize(block, dim=1).to(feats.dtype)
    del base
    method.bank = PatchBank(features=feats, owner=torch.zeros(rows, dtype=torch.int32))
    if search == "ivf":
        method.bank.index()
    start = time.perf_counter()
    det.score([test])
    return {"k": k, "rotations": rotations, "rows": rows, "backbone": backbone, "size": size, "search": search,
            "bank_dtype": bank_dtype,
            "bank_mb": method.bank.nbytes / 2**20, "score_s": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def driver(ks: list[int], extra: list[str]) -> None:
    rows = []
    for k in ks:
        done = subprocess.run([sys.executable, __file__, "--k", str(k), *extra], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| K (x8 rotations) | bank rows | bank MB | backbone forward s | exact search s | IVF build s | "
          "IVF probe 16 s | IVF max / mean deviation | faiss flat s | faiss IVF16 s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["ivf"].get("16") or r["ivf"].get(16)
        print(f"| {r['k']} | {r['rows']:,} | {r['bank_mb']:.0f} | {r['forward_s']:.2f} | {r['exact_s']:.2f} | "
              f"{r['ivf_build_s']:.1f} | {p['s']:.2f} | {p['max_dev']:.1e} / {p['mean_dev']:.1e} | "
              f"{r.get('faiss_flat_s', float('nan')):.2f} | {r.get('faiss_ivf16_s', float('nan')):.2f} | "
              f"{r['peak_rss_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16, help="references (each with 8 rotations)")
    parser.add_argument("--backbone", default="timm:vit_small_patch14_dinov2:random")
    parser.add_argument("--size", type=int, default=448, help="shorter side")
    parser.add_argument("--distinct", type=int, default=4, help="references actually forwarded")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--probes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--memory", choices=["exact", "ivf"], default=None,
                        help="only the peak memory of scoring one image with this search (see memory())")
    parser.add_argument("--rotations", type=int, default=8, choices=[1, 8], help="with --memory: copies per reference")
    parser.add_argument("--bank-dtype", default="fp32", choices=["fp32", "fp16"], help="with --memory")
    parser.add_argument("--driver", type=int, nargs="*", default=None, metavar="K",
                        help="run these K each in its own process and print the table")
    args = parser.parse_args()
    if args.driver is not None:
        extra = ["--backbone", args.backbone, "--size", str(args.size), "--distinct", str(args.distinct),
                 "--repeat", str(args.repeat), "--probes", *map(str, args.probes)]
        driver(args.driver or [1, 4, 16, 64], extra)
        return
    if args.memory:
        print(json.dumps(memory(args.k, args.backbone, args.size, args.distinct, args.memory, args.rotations,
                                args.bank_dtype)))
        return
    print(json.dumps(run(args.k, args.backbone, args.size, args.distinct, args.repeat, args.probes)))


if __name__ == "__main__":
    main()
