"""Compare bundles from what their builds recorded: size against quality, and where each component runs.

Reads nothing but each bundle's manifest.json (the build already measured everything), so a report over bundles
built on other machines, or long ago, says exactly what their builds said. Every number keeps its provenance:
`executed` (ran on the ExecuTorch runtime here) or `simulated` (eager PyTorch computing as the delegate does: fp16
values, fp32 arithmetic; for targets that cannot run here); the two are never merged into one column.

    mdship report artifacts/md-xnnpack-fp32/xnnpack artifacts/md-xnnpack-w8a8/xnnpack ...

The size ratio is against a baseline bundle: `--baseline`, or else the first given bundle whose components are
all fp32 and unquantized (on the same checkpoint).

This module is also the row model of `mdship compare` (mdship.compare): a `Row` is one bundle, its image
figures either the manifest's or those compare measured (`ImageStats`), and every table is a `Table` that renders
as markdown or HTML, so the two commands print the same numbers from one code path. Image PSNR is reported
honestly: identical images (infinite PSNR) are counted, and the median and worst are taken over the others, never a
mean over capped values.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from mdship.bundle import COMPONENTS, Bundle, Manifest
from mdship.errors import BundleError
from mdship.metrics import from_json_db, psnr_summary

SHORT = {"text_encoder": "text enc", "unet": "UNet", "vae_decoder": "decoder"}


@dataclass
class Table:
    """A table as cells: rendered as markdown (`mdship report`, report.md) or HTML (report.html)."""

    head: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> list[str]:
        cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        return (["| " + " | ".join(cell(c) for c in self.head) + " |", "|" + " --- |" * len(self.head)]
                + ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class ImageStats:
    """A bundle's images against the fp32 pipeline's: per-image PSNR (inf = identical) and SSIM, where they came
    from (`mode` executed | simulated; `source`) and how many distinct prompts they rest on."""

    mode: str
    source: str
    psnr_db: list[float]
    ssim: list[float]
    prompts: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ImageStats | None:
        f = manifest.fidelity
        if f is None:
            return None
        return cls(f.mode, "the build (manifest.json)", [from_json_db(v) for v in f.image_psnr_db.per_prompt],
                   list(f.image_ssim.per_prompt), f.prompts)

    @property
    def psnr(self) -> dict:
        return psnr_summary(self.psnr_db)

    @property
    def ssim_mean(self) -> float:
        return sum(self.ssim) / len(self.ssim)

    @property
    def ssim_worst(self) -> float:
        return min(self.ssim)

    def psnr_cell(self) -> str:
        return psnr_text(self.psnr)

    def ssim_cell(self) -> str:
        return f"{self.ssim_mean:.3f} / {self.ssim_worst:.3f}"


def psnr_text(summary: dict) -> str:
    """A `metrics.psnr_summary` as a cell: '41.2 / 33.6' (median / worst dB over the images that differ), with
    '(3 of 16 identical)' when some are identical."""
    if summary["median_db"] is None:
        return f"all identical ({summary['images']})"
    same = f" ({summary['identical']} of {summary['images']} identical)" if summary["identical"] else ""
    return f"{summary['median_db']:.1f} / {summary['worst_db']:.1f}{same}"


def db_cell(value: float) -> str:
    """A component PSNR as a cell: identical outputs (IDENTICAL_DB in a manifest) are 'inf', not 200."""
    value = from_json_db(value)
    return "inf" if math.isinf(value) else f"{value:.1f}"


@dataclass
class Row:
    """One bundle, flattened to what the tables show. `measured`: image figures `mdship compare` measured here
    (executed); without them the manifest's are shown."""

    path: Path
    manifest: Manifest
    measured: ImageStats | None = None

    @property
    def label(self) -> str:
        return f"{self.manifest.recipe.name}/{self.manifest.target['name']}"

    @property
    def components(self) -> dict:
        return self.manifest.components

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components.values())

    @property
    def is_fp32_reference(self) -> bool:
        return all(c.precision == "fp32" and not c.quantization for c in self.components.values())

    def device_verdict(self) -> str:
        """One cell: each device lane's verdict over its CPU models ('arm64-qemu: pass (2 of 3 models, 1
        excluded)'), or '-' when the build ran none."""
        cells = []
        for name, d in (self.manifest.devices or {}).items():
            counted = [m for m in d.models.values() if not m.excluded]
            excluded = len(d.models) - len(counted)
            cells.append(f"{name}: {'pass' if d.passed else 'FAIL'} ({sum(m.passed for m in counted)} of "
                         f"{len(counted)} models" + (f", {excluded} excluded" if excluded else "") + ")")
        return "; ".join(cells) or "-"

    def component_psnr(self, name: str) -> str:
        v = self.components[name].verification
        return db_cell(v.psnr_db) + ("" if v.mode == "executed" else " (sim)")

    @property
    def images(self) -> ImageStats | None:
        return self.measured or ImageStats.from_manifest(self.manifest)

    @property
    def simulated(self) -> bool:
        return self.manifest.verification.mode != "executed"

    def ratio(self, baseline: Row | None) -> float | None:
        """Total bytes against the baseline's, when both come from the same checkpoint."""
        if baseline is None or baseline.manifest.checkpoint.hash != self.manifest.checkpoint.hash:
            return None
        return self.total_bytes / baseline.total_bytes


def load(paths: list[str | Path]) -> list[Row]:
    return [Row(b.path, b.manifest) for b in (Bundle.open(p) for p in paths)]


def pick_baseline(rows: list[Row], baseline: str | Path | None) -> Row | None:
    if baseline is not None:
        [row] = load([baseline])
        return row
    return next((r for r in rows if r.is_fp32_reference), None)


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def _fidelity(row: Row) -> tuple[str, str, str]:
    images = row.images
    if images is None:
        return "-", "-", "-"
    sim = "" if images.mode == "executed" else " (sim)"
    return (images.psnr_cell() + sim, images.ssim_cell() + sim, f"{images.mode}, {len(images.psnr_db)} images of "
            f"{images.prompts} prompts")


def size_quality_table(rows: list[Row], baseline: Row | None) -> Table:
    """Bytes per component and total, ratio to the baseline, component PSNR, image PSNR / SSIM."""
    head = (["bundle", "checkpoint"] + [f"{SHORT[c]} MB" for c in COMPONENTS] + ["total MB", "vs fp32"]
            + [f"{SHORT[c]} dB" for c in COMPONENTS] + ["image PSNR dB median / worst", "SSIM mean / worst",
                                                          "images", "other ISA (emulated)"])
    table = Table(head)
    for r in rows:
        ratio = r.ratio(baseline)
        table.rows.append([r.label, r.manifest.checkpoint.ref] + [mb(r.components[c].bytes) for c in COMPONENTS]
                          + [mb(r.total_bytes), "-" if ratio is None else f"{ratio:.3f}"]
                          + [r.component_psnr(c) for c in COMPONENTS] + list(_fidelity(r)) + [r.device_verdict()])
    return table


def _db(value: float | None) -> str:
    return "-" if value is None else db_cell(value)


def device_table(rows: list[Row]) -> Table:
    """Per bundle, device lane and CPU model, component PSNR vs eager fp32, the prompt's image vs the host runner's
    and the eager pipeline's, and the verdict (an excluded model with its reason)."""
    table = Table(["bundle", "device", "CPU model"] + [f"{SHORT[c]} dB" for c in COMPONENTS]
                  + ["image dB vs host", "image dB vs eager", "verdict"])
    for r in rows:
        for name, d in (r.manifest.devices or {}).items():
            for cpu, m in d.models.items():
                verdict = ("excluded: " + m.excluded if m.excluded else "pass" if m.passed
                           else "FAIL" + (f": {m.error}" if m.error else ""))
                table.rows.append([r.label, f"{name} ({d.mode})", cpu]
                                  + [_db(m.components[c].psnr_db if c in m.components else None) for c in COMPONENTS]
                                  + [_db(m.image_psnr_vs_host_db), _db(m.image_psnr_vs_eager_db), verdict])
    return table


def coverage_table(rows: list[Row]) -> Table:
    """Per bundle and component, partitions, share of FLOPs in delegates, ops left on the CPU."""
    table = Table(["bundle", "component", "partitions", "FLOPs delegated", "CPU ops", "fallback op types", "check"])
    for r in rows:
        for name in COMPONENTS:
            c = r.components[name]
            by_backend = ", ".join(f"{n} {k.removesuffix('Backend')}" for k, n in c.partitions_by_backend.items())
            share = c.delegated_flops_share
            fallback = ", ".join(f"{op.removeprefix('aten_')} x{n}" for op, n in c.fallback_ops.items()) or "-"
            table.rows.append([r.label, SHORT[name], f"{c.partitions} ({by_backend or 'none'})",
                               "-" if share is None else f"{100 * share:.2f}%", c.non_delegated_ops, fallback,
                               c.verification.mode])
    return table


def markdown(paths: list[str | Path], baseline: str | Path | None = None) -> str:
    if not paths:
        raise BundleError("no bundles given; expected one or more bundle directories (the output of `mdship build`)")
    rows = load(paths)
    base = pick_baseline(rows, baseline)
    lines = ["## Size and quality", ""]
    lines += size_quality_table(rows, base).markdown()
    lines += ["", f"Sizes are the .pte programs in MB (10^6 bytes). `vs fp32`: total against "
              f"{base.label if base else 'no fp32 bundle (pass --baseline)'}. Component dB: the program against eager "
              f"fp32 on held-out inputs; `(sim)` = simulated in eager PyTorch, the target cannot run here. Images: "
              f"the bundle's images against the fp32 pipeline's, same prompts, seeds and initial latents; PSNR is "
              f"the median and the worst over the images that differ (identical images have an infinite PSNR and "
              f"are counted apart)."]
    simulated = [r.label for r in rows if r.manifest.verification.mode != "executed"]
    if simulated:
        lines += ["", f"Simulated, not measured on the target: {', '.join(simulated)}."]
    if any(r.manifest.devices for r in rows):
        lines += ["", "## Executed on other instruction sets (emulated, not device measurements)", ""]
        lines += device_table(rows).markdown()
        lines += ["", "Each CPU model ran the bundle's test vectors and the first eval prompt (seed 0) in the C++ "
                  "runner under emulation. A bundle passes on a device lane when every model that is not excluded "
                  "passes; a model is excluded only when the emulator itself is shown to compute wrongly."]
    lines += ["", "## Delegate coverage", ""] + coverage_table(rows).markdown()
    return "\n".join(lines) + "\n"


def to_json_row(r: Row, base: Row | None) -> dict:
    """One bundle's numbers as JSON (`mdship report --json`, and each bundle of `mdship compare`'s report.json)."""
    return {
        "bundle": str(r.path), "label": r.label, "recipe": r.manifest.recipe.name,
        "checkpoint": r.manifest.checkpoint.ref, "backend": r.manifest.backend,
        "verification": r.manifest.verification.mode,
        "bytes": {n: r.components[n].bytes for n in COMPONENTS}, "total_bytes": r.total_bytes,
        "ratio_vs_fp32": r.ratio(base),
        "component_psnr_db": {n: r.components[n].verification.psnr_db for n in COMPONENTS},
        "fidelity": r.manifest.fidelity.model_dump() if r.manifest.fidelity else None,
        "images": image_json(r.images),
        "devices": ({n: d.model_dump(mode="json") for n, d in r.manifest.devices.items()}
                    if r.manifest.devices else None),
        "coverage": {n: r.components[n].model_dump(include={"partitions", "partitions_by_backend",
                                                             "delegated_flops_share", "fallback_ops"})
                     for n in COMPONENTS},
    }


def to_json(paths: list[str | Path], baseline: str | Path | None = None) -> dict:
    rows = load(paths)
    base = pick_baseline(rows, baseline)
    return {"baseline": str(base.path) if base else None, "bundles": [to_json_row(r, base) for r in rows]}


def image_json(images: ImageStats | None) -> dict | None:
    """Honest image statistics as JSON: identical images counted (per_image null), median / worst over the rest."""
    if images is None:
        return None
    return {"mode": images.mode, "source": images.source, "prompts": images.prompts,
            "psnr_db": {**images.psnr, "per_image": [None if math.isinf(v) else round(v, 3) for v in images.psnr_db]},
            "ssim": {"mean": round(images.ssim_mean, 5), "worst": round(images.ssim_worst, 5),
                     "worst_index": images.ssim.index(images.ssim_worst),
                     "per_image": [round(v, 5) for v in images.ssim]}}


# ---------------------------------------------------------------------------------------------- build summary
def summary_rows(results) -> list[dict]:
    """One row per target and component of a finished build (mdship.build.TargetResult)."""
    rows = []
    for r in results:
        for name, c in r.components.items():
            e = c.entry
            rows.append({"target": r.target, "component": name, "precision": e.precision, "bytes": e.bytes,
                         "partitions": e.partitions, "non_delegated_ops": e.non_delegated_ops,
                         "delegated_flops_share": e.delegated_flops_share, "fallback_ops": e.fallback_ops,
                         "structure_ok": e.structure.get("ok"), "verification": e.verification.mode,
                         "psnr_db": round(e.verification.psnr_db, 2), "gate_db": e.verification.gate_db,
                         "cached": c.cached})
    return rows


def format_summary(results) -> str:
    """The table `mdship build` prints: per target and component, size, partitions, checks and PSNR."""
    header = (f"{'target':<10} {'component':<13} {'prec':<5} {'MiB':>8} {'parts':>5} {'cpu ops':>7} {'deleg%':>6} "
              f"{'check':<9} {'PSNR dB':>8} {'gate':>5}  cache")
    lines = [header, "-" * len(header)]
    fallbacks = []
    for row in summary_rows(results):
        share = row["delegated_flops_share"]
        lines.append(f"{row['target']:<10} {row['component']:<13} {row['precision']:<5} {row['bytes'] / 2**20:8.2f} "
                     f"{row['partitions']:>5} {row['non_delegated_ops']:>7} "
                     f"{'-' if share is None else f'{100 * share:.1f}':>6} {row['verification']:<9} "
                     f"{row['psnr_db']:>8.1f} {row['gate_db']:>5.0f}  {'hit' if row['cached'] else 'built'}")
        if row["fallback_ops"]:
            ops = ", ".join(f"{op} x{n}" for op, n in list(row["fallback_ops"].items())[:6])
            more = len(row["fallback_ops"]) - 6
            fallbacks.append(f"  {row['target']}/{row['component']}: {ops}{f', +{more} more' if more > 0 else ''}")
    if fallbacks:
        lines.append("ops left on the CPU (portable kernels):")
        lines.extend(fallbacks)
    for r in results:
        simulated = [n for n, c in r.components.items() if c.entry.verification.mode == "simulated"]
        if simulated:
            lines.append(f"note: {r.target} cannot run here; {', '.join(simulated)} verified by simulation "
                         f"(eager PyTorch computed as the delegate computes: fp16 values, fp32 arithmetic) and "
                         f"structural checks, not on the runtime")
        f = r.fidelity
        if f:
            images = ImageStats(f["mode"], "build", [from_json_db(v) for v in f["image_psnr_db"]["per_prompt"]],
                                f["image_ssim"]["per_prompt"], f["prompts"])
            lines.append(f"{r.target} images vs fp32 ({f['mode']}, {f['prompts']} eval prompts): PSNR median / "
                         f"worst {images.psnr_cell()} dB, SSIM mean / worst {images.ssim_cell()}")
        for w in r.warnings:
            lines.append(f"warning: {w}")
        for name, c in r.components.items():
            for line in c.entry.caveats or []:
                lines.append(f"caveat: {r.target}/{name}: {line}")
    for r in results:
        lines.append(f"bundle: {r.bundle}")
    return "\n".join(lines)
