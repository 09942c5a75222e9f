"""PNG plots of a run: time and peak extra memory against A, one line per provider.

One figure per (device, mode, N, C, dtype) that has at least two values of A, named
benchmark_<device>_<mode>_N<N>_C<C>_<dtype>.png. Rows are dicts with the CSV's columns (numbers
or the CSV's strings).
"""

from pathlib import Path


def plot_rows(rows, out_dir):
    """Draws the figures for `rows` into out_dir; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in rows:
        key = (r["device"], r["mode"], int(r["N"]), int(r["C"]), r["dtype"])
        groups.setdefault(key, []).append(r)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (device, mode, n, c, dtype), group in sorted(groups.items()):
        if len({int(r["A"]) for r in group}) < 2:
            continue
        fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 5))
        providers = list(dict.fromkeys(r["provider"] for r in group))
        for provider in providers:
            pts = sorted((r for r in group if r["provider"] == provider), key=lambda r: int(r["A"]))
            a = [int(r["A"]) for r in pts]
            med = [float(r["median_ms"]) for r in pts]
            lo = [float(r["median_ms"]) - float(r["p20_ms"]) for r in pts]
            hi = [float(r["p80_ms"]) - float(r["median_ms"]) for r in pts]
            style = dict(marker="o", linewidth=2.5 if provider == "fused" else 1.5)
            ax_time.errorbar(a, med, yerr=[lo, hi], capsize=3, label=provider, **style)
            ax_mem.plot(a, [max(float(r["peak_extra_mib"]), 1e-3) for r in pts], label=provider, **style)
        first = group[0]
        title = f"{mode}, N={n}, C={c}, {dtype} — {first['device_name']}, torch {first['torch_version']}, {first['git_commit']}"
        ax_time.set(xscale="log", yscale="log", xlabel="A (anchors per image)", ylabel="median time per call (ms), bars p20-p80", title="time")
        ax_mem.set(xscale="log", yscale="log", xlabel="A (anchors per image)", ylabel="peak extra memory (MiB)", title="memory")
        for ax in (ax_time, ax_mem):
            ax.grid(True, which="both", alpha=0.3)
        ax_time.legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = out_dir / f"benchmark_{device}_{mode}_N{n}_C{c}_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
