"""PNG plots of a run: time and peak extra memory against A, one line per provider.

One figure per (device, mode, N, C, dtype) that has at least two values of A, named
benchmark_<device>_<mode>_N<N>_C<C>_<dtype>.png; and one bar chart of the fraction of the copy
floor per (device, N, A, C) measured in two or more dtypes, named
benchmark_<device>_floor_N<N>_A<A>_C<C>.png. Rows are dicts with the CSV's columns (numbers or
the CSV's strings).
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
    return written + plot_floor_bars(rows, out_dir, plt)


def plot_floor_bars(rows, out_dir, plt):
    """Bars of floor_fraction (log scale), one group per (mode, dtype), one bar per provider."""
    points = {}
    for r in rows:
        points.setdefault((r["device"], int(r["N"]), int(r["A"]), int(r["C"])), []).append(r)
    written = []
    for (device, n, a, c), group in sorted(points.items()):
        if len({r["dtype"] for r in group}) < 2:
            continue
        cells = list(dict.fromkeys((r["mode"], r["dtype"]) for r in group))
        providers = list(dict.fromkeys(r["provider"] for r in group))
        width = 0.8 / len(providers)
        fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(cells)), 5))
        for k, provider in enumerate(providers):
            xs, ys = [], []
            for i, cell in enumerate(cells):
                hit = [r for r in group if (r["mode"], r["dtype"]) == cell and r["provider"] == provider]
                if hit:
                    xs.append(i + (k - (len(providers) - 1) / 2) * width)
                    ys.append(100 * float(hit[0]["floor_fraction"]))
            bars = ax.bar(xs, ys, width, label=provider)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.axhline(100, color="black", linewidth=0.8)
        ax.set_xticks(range(len(cells)), [f"{mode}\n{dtype}" for mode, dtype in cells])
        ax.set(yscale="log", ylabel="% of the copy floor (log scale)")
        first = group[0]
        timing = f", timing {first['timing']}" if first.get("timing") else ""
        ax.set_title(f"N={n}, A={a}, C={c} — {first['device_name']}, torch {first['torch_version']}, {first['git_commit']}{timing}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"benchmark_{device}_floor_N{n}_A{a}_C{c}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
