"""`mdship compare`'s report: report.html (self-contained: every image and plot a base64 data URI, no script, no
network), report.md (for a CI summary or a PR comment, the figures beside it as PNG files) and report.json (every
number, with provenance: mdship.compare.to_json).

The numbers come from mdship.compare (a `Comparison`); the tables are mdship.report `Table`s, the same row model as
`mdship report`, so a table reads the same in the terminal, the markdown and the page. Executed and simulated
bundles are always in separate tables and drawn with separate markers.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from mdship import figures, report
from mdship.atomic import atomic_dir
from mdship.bundle import COMPONENTS
from mdship.compare import Comparison, Entry, front, recommendation, to_json, worst_psnr
from mdship.errors import UserError

REPORT_FILES = ("report.html", "report.md", "report.json")


# ---------------------------------------------------------------------------------------------- tables
def _latency_ms(e: Entry) -> float | None:
    if not e.latency:
        return None
    from mdship.runtime import n_step_key

    key = n_step_key(e.latency)
    return e.latency[key]["median_ms"] if key else None


def _adherence_cell(e: Entry) -> str:
    a = e.adherence
    if not a:
        return "-"
    if "delta_vs_fp32" not in a:
        return f"{a['accuracy']:.3f}"
    return (f"{a['accuracy']:.3f} ({a['delta_vs_fp32']:+.3f}" + ("" if a["significant"] else ", n.s.") + ")")


def headline(c: Comparison, entries: list[Entry]) -> report.Table:
    """One row per bundle: size, ratio, image fidelity, adherence, latency, gates."""
    table = report.Table(["bundle", "backend", "total MB", "vs fp32", "images", "image PSNR dB median / worst",
                          "SSIM mean / worst", "adherence (vs fp32)", "end-to-end ms", "gates", "Pareto"])
    on_front = front(c)
    for e in entries:
        images, ratio, ms = e.row.images, e.row.ratio(c.baseline), _latency_ms(e)
        sim = "" if e.executed else " (sim)"
        failed = [g.name for g in e.gates if not g.passed]
        table.rows.append([
            e.label, e.backend, report.mb(e.row.total_bytes), "-" if ratio is None else f"{ratio:.3f}",
            "-" if images is None else str(len(images.psnr_db)) + ("" if e.executed else " (build's)"),
            images.psnr_cell() + sim if images else "-", images.ssim_cell() + sim if images else "-",
            _adherence_cell(e), "-" if ms is None else f"{ms:,.1f}",
            f"pass ({len(e.gates)})" if not failed else "FAIL: " + ", ".join(failed),
            "yes" if e in on_front else ("-" if e.executed else "not executed")])
    return table


def gates_table(c: Comparison) -> report.Table:
    table = report.Table(["bundle", "gate", "value", "threshold", "figure", "result"])
    for e in c.entries:
        for g in e.gates:
            table.rows.append([e.label, g.name, g.value_text(), f"{g.threshold:g}", g.mode,
                               "pass" if g.passed else "FAIL"])
    return table


def adherence_table(c: Comparison) -> report.Table:
    attributes = list(c.reference_adherence["per_attribute"])
    table = report.Table(["generator", "accuracy", "vs fp32", "significant", "exact match"] + attributes)
    rows = [("fp32 reference (eager)", c.reference_adherence)] + [(e.label, e.adherence) for e in c.executed]
    for label, a in rows:
        delta = a.get("delta_vs_fp32")
        table.rows.append([label, f"{a['accuracy']:.3f}", "-" if delta is None else f"{delta:+.3f}",
                           "-" if delta is None else ("yes" if a["significant"] else "no (within the judge's error)"),
                           f"{a['exact_match']:.3f}"] + [f"{a['per_attribute'][k]:.3f}" for k in attributes])
    return table


def latency_table(c: Comparison) -> report.Table:
    table = report.Table(["bundle", "load ms"] + [f"{report.SHORT[n]} ms" for n in COMPONENTS]
                         + ["1-step ms", "end-to-end ms", "source"])
    for e in c.executed:
        lat = e.latency
        if not lat:
            continue
        one = lat.get("end_to_end_one_step", {}).get("median_ms")
        table.rows.append([e.label, f"{sum(lat['load_ms'].values()):,.1f}"]
                          + [f"{lat['components'][n]['median_ms']:,.2f}" for n in COMPONENTS]
                          + ["-" if one is None else f"{one:,.1f}", f"{_latency_ms(e):,.1f}", e.latency_source])
    return table


def optional_table(c: Comparison) -> report.Table:
    table = report.Table(["metric", "status"] + [e.label for e in c.executed])
    for name, status in c.optional.items():
        if status["status"] != "measured":
            table.rows.append([name, "skipped: " + status["why"]] + ["-"] * len(c.executed))
            continue
        ref = status.get("reference")
        note = "measured" + (f" (fp32 reference {sum(ref) / len(ref):.3f})" if ref else "")
        table.rows.append([name, note] + [f"{sum(e.metrics[name]) / len(e.metrics[name]):.4f}" for e in c.executed])
    return table


def notes(c: Comparison) -> list[str]:
    """What the figures rest on and how to read them, as sentences."""
    out = [f"Checkpoint {c.checkpoint['ref']} (hash {c.checkpoint['hash'][:12]}); prompts from {c.prompts_source}: "
           f"{len(c.prompts)} prompts x {len(c.pairs) // len(c.prompts)} seed(s) = {len(c.pairs)} images per executed "
           f"bundle, each from the same initial latent as the eager fp32 reference's image.",
           "Image PSNR is the median / worst over the images that differ from the reference; identical images have "
           "an infinite PSNR and are counted apart, never averaged in. Gates are judged on the worst image.",
           "Sizes are the .pte programs in MB (10^6 bytes); `vs fp32`: total against "
           + (c.baseline.label if c.baseline else "no fp32 bundle among those compared") + "."]
    if c.simulated:
        out.append("Simulated bundles (" + ", ".join(e.label for e in c.simulated) + ") cannot run here: their "
                   "figures are their build's, computed in eager PyTorch in the delegate's number format on the "
                   "build's own eval prompts; they are never measurements on the device and are kept out of the "
                   "executed rows and of the Pareto front.")
    if c.judge:
        out.append(f"Adherence: the {c.judge.name} on the same images. Its own error rate on generated images is "
                   f"{c.judge.error_rate:.3f} per check ({c.judge.error_source}); a difference from fp32 no larger "
                   f"is marked n.s. (not significant).")
    else:
        out.append(f"Adherence: not measured ({c.judge_skipped}).")
    return out


# ---------------------------------------------------------------------------------------------- figures
def make_figures(c: Comparison, diff_gain: int) -> dict[str, bytes]:
    """name.png -> PNG bytes: size vs PSNR, latency vs PSNR (when measured), component sizes, image grid."""
    gates = {g.threshold for e in c.entries for g in e.gates if g.name.startswith("image PSNR")}
    gate = gates.pop() if len(gates) == 1 else None
    on_front = [e.label for e in front(c)]
    with_images = [e for e in c.entries if e.row.images is not None]
    points = [figures.Point(e.label, e.row.total_bytes / 1e6, worst_psnr(e), e.executed, e.passed)
              for e in with_images]
    out = {"size_vs_psnr.png": figures.scatter(points, "total size (MB)", "Size vs image PSNR (worst image); "
                                               "hollow = simulated", on_front, gate)}
    timed = [e for e in c.executed if _latency_ms(e) is not None]
    if timed:
        points = [figures.Point(e.label, _latency_ms(e), worst_psnr(e), True, e.passed) for e in timed]
        out["latency_vs_psnr.png"] = figures.scatter(points, "end-to-end latency, median (ms)",
                                                     "Latency vs image PSNR (worst image)", None, gate)
    out["component_sizes.png"] = figures.stacked_sizes(
        [e.label for e in c.entries], [report.SHORT[n] for n in COMPONENTS],
        [[e.row.components[n].bytes / 1e6 for n in COMPONENTS] for e in c.entries])
    if c.executed:
        out["grid.png"] = grid(c, diff_gain)
    return out


def grid(c: Comparison, diff_gain: int) -> bytes:
    rows = []
    for i in c.grid_indices():
        prompt, seed = c.pairs[i]
        worst_for = [e.label for e in c.executed if e.row.images.psnr["worst_index"] == i]
        text = f"#{i} seed {seed}" + (f" (worst for {', '.join(worst_for)})" if worst_for else "") + f": {prompt}"
        rows.append((text, [c.reference_images[i]] + [e.images[i] for e in c.executed]))
    return figures.image_grid(["fp32 reference"] + [e.label for e in c.executed], rows, diff_gain)


# ---------------------------------------------------------------------------------------------- documents
def headlines(c: Comparison) -> list[tuple[str, report.Table]]:
    """The headline tables: executed bundles, then simulated ones (never in one table)."""
    seeds = len(c.pairs) // len(c.prompts)
    out = [(f"Executed here ({len(c.prompts)} prompts x {seeds} seed{'s' if seeds > 1 else ''} = {len(c.pairs)} "
            f"images per bundle)", headline(c, c.executed))] if c.executed else []
    if c.simulated:
        out.append(("Simulated (cannot run here; figures from each build)", headline(c, c.simulated)))
    return out


def details(c: Comparison) -> list[tuple[str, report.Table]]:
    rows = [e.row for e in c.entries]
    out = [("Gates", gates_table(c))]
    if c.reference_adherence:
        out.append(("Prompt adherence", adherence_table(c)))
    if any(e.latency for e in c.executed):
        out.append(("Latency", latency_table(c)))
    out += [("Sizes and component PSNR", report.size_quality_table(rows, c.baseline)),
            ("Delegate coverage", report.coverage_table(rows)),
            ("Optional metrics (need local weights)", optional_table(c))]
    return out


FIGURE_TITLES = {"size_vs_psnr.png": "Size vs image PSNR", "latency_vs_psnr.png": "Latency vs image PSNR",
                 "component_sizes.png": "Size per component", "grid.png": "Images (rows: prompts; columns: fp32 "
                                                                          "and each executed bundle)"}


def markdown(c: Comparison, pictures: dict[str, bytes]) -> str:
    lines = ["# Bundle comparison", "", "**Recommendation.** " + recommendation(c), ""]
    for title, table in headlines(c) + details(c):
        lines += [f"## {title}", ""] + table.markdown() + [""]
    lines += ["## Figures", ""] + [f"![{FIGURE_TITLES[n]}]({n})" for n in pictures] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in notes(c)]
    return "\n".join(lines) + "\n"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}.rec{background:#eef6ee;
border-left:4px solid #55a868;padding:8px 12px}.figs{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}
figcaption{font-size:12px;color:#555}ul{font-size:13px}
"""


def page(c: Comparison, pictures: dict[str, bytes]) -> str:
    def img(name: str) -> str:
        data = base64.b64encode(pictures[name]).decode("ascii")
        return (f'<figure><img alt="{html.escape(FIGURE_TITLES[name])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(FIGURE_TITLES[name])}</figcaption></figure>")

    plots = [n for n in pictures if n != "grid.png"]
    body = [f"<h1>Bundle comparison: {html.escape(c.checkpoint['ref'])}</h1>",
            f'<p class="rec"><b>Recommendation.</b> {html.escape(recommendation(c))}</p>']
    for title, table in headlines(c):
        body += [f"<h2>{html.escape(title)}</h2>", table.html()]
    body += ["<h2>Plots</h2>", '<div class="figs">' + "".join(img(n) for n in plots) + "</div>"]
    if "grid.png" in pictures:
        body += ["<h2>Images</h2>", img("grid.png")]
    for title, table in details(c):
        body += [f"<h2>{html.escape(title)}</h2>", table.html()]
    body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes(c)) + "</ul>"]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mdship compare</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def check_out_dir(out: Path) -> None:
    """DIR is replaced whole (atomically), so it must be new, empty, or an earlier report: never another folder."""
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise UserError(f"--out {out}: an existing directory that is not a compare report; expected a new or empty "
                        f"directory (it is replaced whole)")


def write(c: Comparison, out: str | Path, diff_gain: int = 8) -> Path:
    """report.html, report.md, report.json and the figures as PNGs, swapped into `out` at once."""
    out = Path(out)
    check_out_dir(out)
    pictures = make_figures(c, diff_gain)
    with atomic_dir(out) as tmp:
        for name, data in pictures.items():
            (tmp / name).write_bytes(data)
        (tmp / "report.md").write_text(markdown(c, pictures), encoding="utf-8")
        (tmp / "report.html").write_text(page(c, pictures), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(to_json(c), indent=2) + "\n", encoding="utf-8")
    return out
