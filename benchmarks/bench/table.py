"""What a run prints at its end: the Markdown table, what its columns mean, warnings on noisy figures."""

from .providers import PROVIDERS
from .timing import MODES

# A row whose 80th percentile is over this multiple of its 20th is flagged as noisy.
NOISY_SPREAD = 1.5
# Copy bandwidths at a run's start and end further apart than this ratio get their floor % restated.
FLOOR_DRIFT = 1.1


def fmt(value, digits=3):
    if value == "" or value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def point_key(row):
    return (row["mode"], row["N"], row["A"], row["C"], row["dtype"])


def markdown_table(rows):
    """One line per row, rows grouped by size, dtype and mode; the spread (p20-p80) stands
    beside each median, and `fused speedup` = this provider's median / fused's median on the
    same mode, size and dtype in this run. CPU runs add each row's page faults per call."""
    order = {name: i for i, name in enumerate(PROVIDERS)}
    modes = {m: i for i, m in enumerate(MODES)}
    rows = sorted(rows, key=lambda r: (r["N"], r["A"], r["C"], r["dtype"], modes[r["mode"]], order.get(r["provider"], len(order))))
    fused = {point_key(r): r["median_ms"] for r in rows if r["provider"] == "fused"}
    faults = any(r.get("page_faults_per_call") is not None for r in rows)
    head = "| mode | N | A | C | dtype | provider | median ms | p20-p80 ms | peak extra MiB |" + (" page faults/call |" if faults else "") + " GB/s | floor % | fused speedup |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        key = point_key(r)
        speedup = f"{r['median_ms'] / fused[key]:.2f}x" if key in fused else "-"
        cells = [
            r["mode"],
            str(r["N"]),
            str(r["A"]),
            str(r["C"]),
            r["dtype"],
            r["provider"],
            fmt(r["median_ms"]),
            f"{fmt(r['p20_ms'])}-{fmt(r['p80_ms'])}",
            fmt(r["peak_extra_mib"]),
            *([fmt_count(r.get("page_faults_per_call"))] if faults else []),
            fmt(r["achieved_gbps"]),
            fmt(100 * r["floor_fraction"], 2),
            speedup,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_count(value):
    return "-" if value is None else f"{value:.0f}"


def column_legend(rows, device):
    """The lines under the table that say, once each, what its columns mean (the page-fault
    column only where the table has it)."""
    from .floor import copy_words

    faults = any(r.get("page_faults_per_call") is not None for r in rows)
    lines = [
        "- mode: forward = the loss alone; forward_backward = the loss and its gradient",
        "- N, A, C, dtype: images, anchors per image, classes; the logits' dtype",
        "- provider: what computes the loss (benchmarks/README.md lists them); *_pooled ones compute one loss over the whole batch, the others one per image",
        "- median ms, p20-p80 ms: time per call, the median and the 20th-80th percentile range of the timed calls",
        "- peak extra MiB: memory one call allocates beyond its inputs (the gradient included)",
    ]
    if faults:
        lines.append("- page faults/call: fresh memory pages one call touches first (the OS zeroes each one: slow)")
    lines += [
        "- GB/s: the bytes a call cannot avoid moving (the forward reads logits and labels once; the backward reads them again and writes the gradient) / the median time",
        f"- floor %: GB/s against the {copy_words(device)} above: 100% would be as fast as copying those bytes",
        "- fused speedup: this row's median / fused's median at the same mode, size and dtype (above 1: fused is faster)",
    ]
    return lines


def noise_warnings(rows):
    """Sentences on figures that the machine's load has made unreliable: a provider whose
    forward median is above its forward+backward median (which does the forward too: only
    noise gives that), and rows whose p80 is over NOISY_SPREAD times their p20."""
    out = []
    medians = {(r["provider"],) + point_key(r): r["median_ms"] for r in rows}
    for r in rows:
        if r["mode"] != "forward":
            continue
        both = medians.get((r["provider"], "forward_backward") + point_key(r)[1:])
        if both is not None and r["median_ms"] > both:
            out.append(
                f"- {r['provider']} N={r['N']} A={r['A']} C={r['C']} {r['dtype']}: forward {r['median_ms']:.3g} ms is slower than "
                f"forward+backward {both:.3g} ms: the machine was busy; take neither figure at face value"
            )
    noisy = [r for r in rows if r["p20_ms"] > 0 and r["p80_ms"] > NOISY_SPREAD * r["p20_ms"]]
    if noisy:
        several = len({point_key(r)[1:] for r in rows}) > 1  # then each name says its point
        names = ", ".join(f"{r['provider']} {r['mode']}" + (f" {r['N']}x{r['A']}x{r['C']} {r['dtype']}" if several else "") for r in noisy)
        out.append(f"- p80 over {NOISY_SPREAD:g}x p20 (noisy): {names}")
    return out


def floor_drift(rows, copy_gbps_start, copy_gbps_end):
    """Sentences for a run whose copy bandwidth measured more than FLOOR_DRIFT times higher at
    its end than at its start: the rows' floor % use the start's figure, so a dip there inflates
    every floor % of the run (one run measured 12.1 GB/s at its start and 14.3 at its end, where
    the others measured 19-21). Restates fused's floor % against the end's, the stricter floor.
    A start higher than the end needs nothing: the columns already use the stricter one."""
    if copy_gbps_start <= 0 or copy_gbps_end <= FLOOR_DRIFT * copy_gbps_start:
        return []
    out = [
        f"- copy bandwidth {copy_gbps_start:.1f} GB/s at the start and {copy_gbps_end:.1f} at the end: "
        f"the floor % columns use the start's; against the end's:"
    ]
    for r in rows:
        if r["provider"] == "fused":
            out.append(
                f"  - fused {r['mode']} N={r['N']} A={r['A']} C={r['C']} {r['dtype']}: "
                f"{100 * r['achieved_gbps'] / copy_gbps_end:.1f}% of the floor (not {100 * r['floor_fraction']:.1f}%)"
            )
    return out
