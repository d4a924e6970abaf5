"""mamba_ssm's CUDA selective scan, the anchor of DESIGN.md 7, for same-run comparisons.

The anchor table was timed on another machine; its host-bound rows move with the host.
This builds mamba_ssm 2.3.2.post1's `selective_scan_cuda` from its PyPI sdist on the GPU
machine, so that scripts/bench_selective_scan.py --mamba times it beside ours, in one
process on one host. Nothing of it is committed: the sources live in an ignored folder.

    python scripts/mamba_reference.py prepare        # here: download, verify, unpack
    python scripts/mamba_reference.py build          # there (carry .devdata/mamba_ssm)

`prepare` downloads the pinned sdist (sha256 checked) and unpacks only the selective
scan's CUDA sources and the four Python files its `selective_scan_fn` imports into
.devdata/mamba_ssm (a temporary folder renamed into place). `build` compiles the
extension with torch's cpp_extension and ninja for the visible GPU's architecture only,
into .devdata/mamba_ssm_build (beside the carried folder, which a carry replaces whole:
kept between calls while the machine stays warm), and checks it against our sequential
reference on a small shape.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import time
import types
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".devdata" / "mamba_ssm"
SDIST = "mamba_ssm-2.3.2.post1"
SDIST_URL = ("https://files.pythonhosted.org/packages/af/48/aa7bec0efc7453fa0512276c0069c854"
             f"bf684219050294266534bfef34bb/{SDIST}.tar.gz")
SDIST_SHA256 = "104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028"
CUDA_DIR = "csrc/selective_scan/"
PYTHON_FILES = ("mamba_ssm/ops/selective_scan_interface.py", "mamba_ssm/ops/triton/layer_norm.py",
                "mamba_ssm/utils/torch.py", "mamba_ssm/utils/determinism.py")
# The extension's translation units, as mamba_ssm's setup.py lists them: the bindings name
# the complex instantiations too, so all are built.
SOURCES = ["selective_scan.cpp"] + [
    f"selective_scan_{kind}.cu" for kind in (
        "fwd_fp32", "fwd_fp16", "fwd_bf16", "bwd_fp32_real", "bwd_fp32_complex",
        "bwd_fp16_real", "bwd_fp16_complex", "bwd_bf16_real", "bwd_bf16_complex")]
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__",
              "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
              "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "--use_fast_math"]


def wanted_members(names: list[str]) -> dict[str, str]:
    """{member name in the sdist: path under the target folder} for what we unpack."""
    prefix = f"{SDIST}/"
    picked = {}
    for name in names:
        inside = name[len(prefix):] if name.startswith(prefix) else None
        if inside and ((inside.startswith(CUDA_DIR) and not inside.endswith("/"))
                       or inside in PYTHON_FILES):
            picked[name] = inside
    missing = ([f for f in PYTHON_FILES if f not in picked.values()]
               + [s for s in SOURCES if CUDA_DIR + s not in picked.values()])
    if missing:
        raise ValueError(f"{SDIST}.tar.gz: missing {', '.join(missing)}")
    return picked


def unpack(archive: Path, target: Path) -> None:
    """Unpack wanted_members of the sdist at `archive` into `target` (replaced whole)."""
    staging = Path(tempfile.mkdtemp(prefix=".mamba_ssm.", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            for name, inside in wanted_members(tar.getnames()).items():
                data = tar.extractfile(name)
                if data is None:
                    raise ValueError(f"{archive}: {name} is not a regular file")
                (staging / inside).parent.mkdir(parents=True, exist_ok=True)
                (staging / inside).write_bytes(data.read())
    except BaseException:
        shutil.rmtree(staging)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def prepare(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{SDIST}.tar.gz"
        print(f"downloading {SDIST_URL}")
        with urllib.request.urlopen(SDIST_URL, timeout=120) as response:
            archive.write_bytes(response.read())
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise SystemExit(f"{archive.name}: sha256 {digest}, expected {SDIST_SHA256}")
        unpack(archive, target)
    print(f"unpacked {SDIST}'s selective scan into {target}")


def build(source: Path, verbose: bool = False) -> types.ModuleType:
    """The compiled `selective_scan_cuda` (built on first use, then loaded from the build
    folder), registered under that name so mamba_ssm's Python imports it."""
    from torch.utils.cpp_extension import load

    cuda_dir = source / CUDA_DIR
    if not cuda_dir.is_dir():
        raise SystemExit(f"{cuda_dir}: not found; run `python scripts/mamba_reference.py "
                         "prepare` here and carry the folder")
    build_dir = source.parent / f"{source.name}_build"
    build_dir.mkdir(exist_ok=True)
    module = load(name="selective_scan_cuda", sources=[str(cuda_dir / s) for s in SOURCES],
                  extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=NVCC_FLAGS,
                  extra_include_paths=[str(cuda_dir)], build_directory=str(build_dir),
                  verbose=verbose)
    sys.modules["selective_scan_cuda"] = module
    return module


def selective_scan_fn(source: Path):
    """mamba_ssm's public `selective_scan_fn` (its autograd Function), imported from the
    unpacked files without running mamba_ssm's package __init__ (which imports its whole
    model zoo): the packages are registered as empty modules over their folders."""
    import importlib

    if "selective_scan_cuda" not in sys.modules:
        build(source)
    for package in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.utils"):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(source.joinpath(*package.split(".")))]
            sys.modules[package] = module
    return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["prepare", "build"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"where the sources are unpacked (default {DEFAULT_DIR})")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.dir)
        return 0
    start = time.perf_counter()
    build(args.dir, verbose=True)
    print(f"built selective_scan_cuda in {time.perf_counter() - start:.0f} s")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_selective_scan import check_mamba

    return 0 if check_mamba(selective_scan_fn(args.dir)) else 1


if __name__ == "__main__":
    sys.exit(main())
