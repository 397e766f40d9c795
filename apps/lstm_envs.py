"""Table 6: the disk size of each environment, measured on real virtual environments.

    python -m apps.lstm_envs [--dir bench/.venvs] [--rebuild]

Builds three environments with ``pip`` (its usual index and cache settings; the only torch ever
requested is the pinned ``torch==2.13.0``, never an unpinned one that would pull a multi-GB CUDA
build) and sums the sizes of the files under each one's ``site-packages``:

* thin client: ``pip install <this project>`` (no extras): storage_api, workflows, tqdm;
* backend: ``pip install '<this project>[ml]'`` (torch 2.13.0, numpy, pandas, scikit-learn, matplotlib);
* baseline: ``torch==2.13.0 numpy pandas scikit-learn`` (the paper's app without a store).

Environments are created ``--without-pip`` and filled by this interpreter's pip (``pip --python``),
so site-packages holds only what was installed. The backend and baseline environments are kept
under ``--dir`` and reused while their requirements are unchanged; the thin client is rebuilt
every time (it contains this project's current code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "bench" / ".venvs"


def specs() -> dict[str, list[str]]:
    return {
        "thin client": [str(ROOT)],
        "backend": [f"{ROOT}[ml]"],
        "baseline": ["torch==2.13.0", "numpy", "pandas", "scikit-learn"],
    }


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise FileNotFoundError(f"no site-packages under {venv}")
    return found[0]


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed, each inode counted once)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def build(venv: Path, requirements: list[str], *, reuse: bool = True) -> Path:
    """Create ``venv`` holding ``requirements`` (reused when it already holds exactly them)."""
    marker = venv / ".requirements"
    spec = "\n".join(requirements)
    if reuse and marker.exists() and marker.read_text() == spec:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-warn-script-location", *requirements], check=True)
    marker.write_text(spec)
    return venv


def measure(directory: Path = DEFAULT_DIR, *, only: tuple[str, ...] | None = None,
            rebuild: bool = False) -> dict[str, dict]:
    """Build (or reuse) and measure the environments; ``{name: {bytes, packages, venv}}``."""
    out = {}
    for name, reqs in specs().items():
        if only and name not in only:
            continue
        venv = build(directory / name.replace(" ", "-"), reqs, reuse=not rebuild and name != "thin client")
        sp = site_packages(venv)
        dists = sorted(p.name.split("-")[0] for p in sp.glob("*.dist-info"))
        out[name] = {"bytes": tree_size(sp), "packages": dists, "venv": str(venv), "requirements": reqs}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached environments too")
    args = p.parse_args(argv)
    for name, m in measure(args.dir, rebuild=args.rebuild).items():
        print(f"{name:12s} {m['bytes'] / 1e6:10.1f} MB  {', '.join(m['packages'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
