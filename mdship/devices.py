"""Where a bundle runs: this machine (`host`), or the phone's instruction set under emulation (`arm64-qemu`).

Phones run XNNPACK's arm64 kernels (NEON dotprod / i8mm int8, real ARMv8.2 fp16 arithmetic, SME on the newest
cores), not the x86 ones `host` runs. `arm64-qemu` runs the C++ runner cross-compiled for arm64 Linux (`make
runner-arm64`, tools/build_runner_arm64.sh) under Debian's qemu-user, once per CPU model of ARM64_MATRIX. Its
numbers are labelled "emulated (qemu)" everywhere: the instructions are the phone's, the timings and the CPU are
not, and an emulator can be wrong. It has been: Debian 12's qemu 7.2 computes SME's SMOPA (4-way int8) wrongly,
so int8 bundles "fail" on its SME model while Debian 13's qemu 10.0 runs the very same KleidiAI kernels right.
Each model is therefore probed (tools/arm64/cpu_probe.c: its features, and whether its SME outer products match
plain C) and its KleidiAI micro-kernels traced; a model on which a kernel that ran uses an outer product the probe
found wrong is excluded from the verdict, with that reason recorded. A failure no probe explains counts: the fp16
bundle's SME path (PF16, KleidiAI f16 sme_mopa) gave NaN in both qemu 7.2 and 10.0, bit for bit, while XNNPACK ran
mdship's fp16 programs in fp32 after their first norm; with them computing in fp16 it passes (runner/README.md).

A bundle passes on arm64 when every CPU model of the matrix that is not excluded passes its test vectors.

`adb:SERIAL` (a real Android phone through Debian's `adb`) would be a third `Device`: push the runner, its
libraries and the bundle to /data/local/tmp, run `--selftest --json` there. It needs a runner built with the
Android NDK (runner/README.md): the glibc binary this lane builds does not run on Android. Not written yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdship import backends
from mdship.errors import BundleError, UserError

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CpuModel:
    name: str  # qemu's -cpu value
    role: str  # the real CPUs it stands for


#: The arm64 CPU-model matrix: what XNNPACK dispatches on differs between these (fp16 arithmetic, dotprod, i8mm,
#: SVE, SME), so each runs different micro-kernels. Cortex-A76 has the features of the Cortex-A76/A77/A78/X1
#: big cores in most phones in use (ARMv8.2: fp16 arithmetic, dotprod; no i8mm): the pinned phone model.
ARM64_MATRIX = (
    CpuModel("cortex-a76", "phone big core: ARMv8.2 NEON with dotprod and fp16 arithmetic (Cortex-A76/A77/A78/X1 "
                           "class; the pinned phone model)"),
    CpuModel("cortex-a53", "baseline ARMv8.0 NEON: no dotprod, no fp16 arithmetic (low-end phones, little cores)"),
    CpuModel("max", "every feature qemu emulates: SVE2, i8mm, bf16 and SME (the SME-capable model; qemu 7.2 has "
                    "no SME2)"),
)
PHONE_MODEL = ARM64_MATRIX[0].name
MODEL_NAMES = tuple(m.name for m in ARM64_MATRIX)

EMULATED = "emulated (qemu user mode): the phone's instruction set, not a device measurement"


def _runtime_libs() -> Path:
    return Path(os.environ.get("MDSHIP_ARM64_CACHE", REPO / ".cache" / "arm64"))


def _build_dir() -> Path:
    return Path(os.environ.get("MDSHIP_ARM64_BUILD", REPO / "artifacts" / "runner-arm64-build"))


# ---------------------------------------------------------------------------------------------- host
class Host:
    """This machine: the Python host runner (mdship.runtime) on the ExecuTorch pip wheel."""

    name = "host"

    def unavailable(self) -> str | None:
        return None

    def verify(self, bundle: str | Path) -> dict:
        from mdship.runtime import verify

        return verify(bundle)


# ---------------------------------------------------------------------------------------------- arm64 under qemu
class Arm64Qemu:
    """The arm64 C++ runner under qemu-aarch64, on one CPU model (`cpu`) or on the whole matrix (None)."""

    name = "arm64-qemu"

    def __init__(self, cpu: str | None = None, threads: int = 1):
        self.cpu = cpu
        self.threads = threads
        self.qemu = os.environ.get("MDSHIP_QEMU", "qemu-aarch64")  # another build, e.g. for a cross-check
        self.runner = _build_dir() / "mdship-runner"

    @property
    def models(self) -> tuple[CpuModel, ...]:
        if self.cpu is None:
            return ARM64_MATRIX
        return tuple(m for m in ARM64_MATRIX if m.name == self.cpu) or (CpuModel(self.cpu, "chosen with --device"),)

    def unavailable(self) -> str | None:
        """Why this lane cannot run here, or None."""
        if not self.runner.is_file():
            return f"{self.runner}: the arm64 runner is not built; run `make runner-arm64` first"
        if not shutil.which(self.qemu):
            return f"{self.qemu}: not found; run `make runner-arm64` (installs Debian's qemu-user)"
        return None

    def require(self) -> None:
        reason = self.unavailable()
        if reason:
            raise UserError(reason)

    def emulator(self) -> str:
        if not hasattr(self, "_emulator"):
            out = subprocess.run([self.qemu, "--version"], capture_output=True, text=True).stdout
            self._emulator = out.splitlines()[0].strip() if out else self.qemu
        return self._emulator

    def command(self, cpu: str, program: Path, args: list[str], env: dict[str, str] | None = None) -> list[str]:
        """qemu-aarch64 running `program` on CPU model `cpu`: Debian's arm64 glibc (from the cross compiler) as the
        loader prefix, the aarch64 executorch wheel's and the arm64 libssl's libraries on the guest's path."""
        libs = _runtime_libs()
        guest = {"LD_LIBRARY_PATH": f"{libs / 'executorch' / 'lib'}:{libs / 'sysroot/usr/lib/aarch64-linux-gnu'}",
                 **(env or {})}
        return [self.qemu, "-L", "/usr/aarch64-linux-gnu", "-cpu", cpu,
                *[a for k, v in guest.items() for a in ("-E", f"{k}={v}")], str(program), *args]

    def _run(self, cpu: str, program: Path, args: list[str], env: dict | None = None,
             ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(cpu, program, args, env), capture_output=True, text=True)
        if proc.returncode not in ok:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise BundleError(f"arm64 ({cpu}, emulated): {last}")
        return proc

    # -------------------------------------------------------------------- one CPU model
    def probe(self, cpu: str) -> dict:
        """tools/arm64/cpu_probe.c on this model: its features and, with SME, whether SMOPA / FMOPA are right."""
        return json.loads(self._run(cpu, _build_dir() / "cpu_probe", []).stdout)

    def selftest(self, bundle: Path, cpu: str, etdump_dir: Path | None = None,
                 trace: Path | None = None) -> dict:
        """The runner's --selftest: {component: {psnr_db, gate_db, vectors, passed}}; the ETDumps into
        `etdump_dir`, the KleidiAI micro-kernels that ran into `trace` (tools/arm64/kernel_trace.c)."""
        args = [str(bundle), "--selftest", "--json", "--threads", str(self.threads)]
        if etdump_dir is not None:
            args += ["--etdump", str(etdump_dir)]
        env = ({"LD_AUDIT": str(_build_dir() / "kernel_trace.so"), "MDSHIP_KERNEL_TRACE": str(trace)}
               if trace is not None else None)
        proc = self._run(cpu, self.runner, args, env, ok=(0, 1))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def generate(self, bundle: Path, cpu: str, prompt: str, seed: int, out: Path, sampler: str | None = None,
                 steps: int | None = None, guidance: float | None = None, verify: bool = True) -> Path:
        args = [str(bundle), "--prompt", prompt, "--seed", str(seed), "--out", str(out),
                "--threads", str(self.threads)]
        for flag, value in (("--sampler", sampler), ("--steps", steps), ("--guidance", guidance)):
            if value is not None:
                args += [flag, str(value)]
        if not verify:
            args.append("--no-verify")
        self._run(cpu, self.runner, args)
        return out

    # -------------------------------------------------------------------- the matrix
    def verify(self, bundle: str | Path, prompt: str | None = None, seed: int = 0,
               references: dict[str, np.ndarray] | None = None) -> dict:
        """Every model's self-test (and, given a prompt, its image against `references`: {"host": ...,
        "eager": ...}); the `DeviceVerification` of mdship.bundle as a dict."""
        self.require()
        bundle = Path(bundle)
        models = {m.name: self._verify_model(bundle, m, prompt, seed, references or {}) for m in self.models}
        counted = [r for r in models.values() if not r.get("excluded")]
        return {"device": self.name, "mode": "emulated", "emulator": self.emulator(),
                "runner": f"{self.runner.name} (aarch64-linux-gnu)", "note": EMULATED,
                "prompt": prompt, "seed": seed, "models": models,
                "passed": bool(counted) and all(r["passed"] for r in counted)}

    def _verify_model(self, bundle: Path, model: CpuModel, prompt: str | None, seed: int,
                      references: dict[str, np.ndarray]) -> dict:
        probe = self.probe(model.name)
        result: dict = {"cpu": model.name, "role": model.role, "features": probe["features"]}
        with tempfile.TemporaryDirectory(prefix="mdship-arm64-") as tmp:
            tmp = Path(tmp)
            try:
                scores = self.selftest(bundle, model.name, tmp / "etdump", tmp / "kernels.txt")
                result["components"] = {n: {k: s[k] for k in ("psnr_db", "gate_db", "passed")}
                                        for n, s in scores.items()}
                result["operators"] = {p.stem: sorted(etdump_operators(p)) for p in sorted((tmp / "etdump").glob("*.etdp"))}
                result["microkernels"] = read_trace(tmp / "kernels.txt")
                if prompt is not None:
                    image = _read_png(self.generate(bundle, model.name, prompt, seed, tmp / "image.png", verify=False))
                    result.update({f"image_psnr_vs_{k}_db": round(_image_psnr(ref, image), 2)
                                   for k, ref in references.items()})
            except BundleError as e:
                result["error"] = str(e)
        result["excluded"] = exclusion(probe, self.emulator(), result.get("microkernels", []))
        result["passed"] = "error" not in result and all(c["passed"] for c in result.get("components", {}).values())
        return result


#: SME outer-product instructions tools/arm64/cpu_probe.c checks, and how a KleidiAI micro-kernel's name says it
#: uses one: "<the probe's key>": (label, the output / operand types in the name). Only the SME "mopa" kernels
#: issue outer products.
SME_INSTRUCTIONS = {
    "smopa_4way_i8": ("SMOPA (4-way, int8)", ("qai8", "qsi8", "qsi4")),
    "fmopa_f32": ("FMOPA (fp32)", ("matmul_clamp_f32_f32",)),
    "fmopa_2way_f16": ("FMOPA (widening, fp16)", ("matmul_clamp_f16_f16",)),
}


def exclusion(probe: dict, emulator: str, microkernels: list[str]) -> str | None:
    """Why a CPU model's results are an emulator artefact, or None: an SME outer product the probe found wrong on
    this model, used by a micro-kernel that ran. A wrong instruction no kernel used excludes nothing."""
    bad = []
    for key, (label, tags) in SME_INSTRUCTIONS.items():
        users = [k for k in microkernels if "_sme" in k and "mopa" in k and any(t in k for t in tags)]
        if probe.get(f"{key}_wrong") and users:
            bad.append(f"{label}: {probe[key + '_wrong']} of {probe['elements']} elements wrong, used by "
                       f"{', '.join(users)}")
    if not bad:
        return None
    return (f"emulator artefact: {emulator} computes SME outer products wrongly at SVL {probe.get('svl_bits')} "
            f"({'; '.join(bad)}; tools/arm64/cpu_probe.c against plain C), so this model's results say nothing "
            f"about the bundle")


def read_trace(path: Path) -> list[str]:
    """The KleidiAI routines (kai_run_*) a run called, in first-call order, from tools/arm64/kernel_trace.c."""
    if not path.is_file():
        return []
    names = [line.split("\t")[0] for line in path.read_text().splitlines()]
    return list(dict.fromkeys(n for n in names if n.startswith("kai_run_")))


def etdump_operators(path: Path) -> dict[str, int]:
    """Operator -> calls from an ETDump: the delegate's operators by name ('Convolution (NHWC, F16) IGEMM'),
    operators left on the CPU as 'aten <op>'."""
    from mdship.runtime import etdump_frame, op_label

    frame = etdump_frame(path)
    ops: dict[str, int] = {}
    for name, delegated in zip(frame.event_name, frame.is_delegated_op):
        label = op_label(name, bool(delegated))
        if label:
            ops[label] = ops.get(label, 0) + 1
    return ops


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _image_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    from mdship.metrics import image_psnr, json_db

    return json_db(image_psnr(reference, candidate))  # a manifest field: identical images as IDENTICAL_DB


# ---------------------------------------------------------------------------------------------- lookup
NAMES = ("host", "arm64-qemu")


def get(spec: str) -> Host | Arm64Qemu:
    """'host', 'arm64-qemu' (the whole CPU-model matrix) or 'arm64-qemu:MODEL' (one qemu -cpu model)."""
    name, _, option = spec.partition(":")
    if name == "host" and not option:
        return Host()
    if name == "arm64-qemu":
        return Arm64Qemu(option or None)
    raise UserError(f"--device {spec}: unknown device; expected host, arm64-qemu or arm64-qemu:MODEL "
                    f"(MODEL: a qemu -cpu model, e.g. {', '.join(MODEL_NAMES)})")


def runs(device: Host | Arm64Qemu, backend: str) -> bool:
    """Whether `device` executes `backend`'s programs: the arm64 runner links what the executorch wheel ships,
    the same delegates as the host wheel."""
    return backends.get(backend).runs_here
