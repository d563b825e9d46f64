"""Download the wheels bench/gpu_check.sh needs on an air-gapped GPU node, for that node's Python and platform.

The node is assumed to have torch, transformers, peft and accelerate (and whatever they depend on);
everything else the check's stages import is downloaded here: the packages in ROOTS at their
pyproject.toml pins, plus their dependencies as pip resolves them for the target, minus the closure of
the preinstalled four (resolved the same way, at their pins). Pure-Python packages that PyPI has only as
source are built into `py3-none-any` wheels here, so the node installs with `--no-index` and no build step.

    python bench/gpu_wheels.py --python-version 3.11 [--platform manylinux_2_28_x86_64] [--dest .gpu-wheels]

The destination gets the wheels and `requirements.txt` (every wheel as name==version), which
`bench/gpu_check.sh --wheels DIR` installs. Needs pip and PyPI; nothing is installed here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What the stages the check runs import beyond the preinstalled packages (the rest comes as dependencies).
ROOTS = ("hydra-core", "trl", "lm-eval", "datasets", "xgrammar", "datasketch", "jsonschema", "tqdm")
PREINSTALLED = ("torch", "transformers", "peft", "accelerate")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    """canonical name -> version of every `name==version` in pyproject.toml's [project] dependencies
    (a regex, not tomllib: this runs on Python 3.10 too)."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    if block is None:
        sys.exit("gpu_wheels: no `dependencies = [...]` block in pyproject.toml")
    return {canonical(n): v for n, v in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"\s;]+)', block.group(1))}


def pinned(names: tuple[str, ...], pins: dict[str, str]) -> list[str]:
    missing = [n for n in names if canonical(n) not in pins]
    if missing:
        sys.exit(f"gpu_wheels: {missing} not pinned with == in pyproject.toml")
    return [f"{n}=={pins[canonical(n)]}" for n in names]


def platforms(tag: str) -> list[str]:
    """pip matches --platform literally (it expands only manylinux2014/2010): list every older manylinux
    tag a glibc-2.N node also runs, newest first."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{v}_{arch}" for v in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for v, name in legacy.items() if v <= glibc]


def pip(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"gpu_wheels: pip {' '.join(args[:3])} ... failed:\n{proc.stderr[-3000:]}")
    return proc


def resolve(reqs: list[str], target: list[str], find_links: Path | None) -> dict[str, dict]:
    """pip's resolution (dry run, metadata only) -> canonical name -> {version, url}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        extra = ["--find-links", str(find_links)] if find_links else []
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(Path(tmp) / "t"), *target, *extra, *reqs)
        items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): {"version": i["metadata"]["version"], "url": i["download_info"]["url"]}
            for i in items}


def build_source_only(reqs: list[str], dest: Path) -> list[str]:
    """Resolve for this interpreter (sources allowed); build each source-only package into a wheel in dest.
    Only pure-Python results are accepted: a compiled one would be built for this machine, not the node."""
    built = []
    for name, item in sorted(resolve(reqs, [], None).items()):
        if item["url"].endswith(".whl"):
            continue
        pip("wheel", "--no-deps", "--quiet", "-w", str(dest), f"{name}=={item['version']}")
        wheel = next((w for w in dest.glob("*.whl") if canonical(w.name.split("-")[0]) == name), None)
        if wheel is None or not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"gpu_wheels: {name} {item['version']} exists only as source and does not build a pure-Python wheel")
        built.append(name)
    return built


def check_pip() -> None:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("pip").split(".")[:2])
    if (major, minor) < (23, 1):  # --report and metadata-only resolution
        sys.exit(f"gpu_wheels: pip {version('pip')} is too old; run `{sys.executable} -m pip install -U pip` (>= 23.1)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", required=True, help="the node's Python, e.g. 3.10, 3.11, 3.12")
    ap.add_argument("--platform", default="manylinux_2_28_x86_64",
                    help="the node's newest wheel platform tag (glibc 2.28 = RHEL 8, Ubuntu 20.04 has 2.31)")
    ap.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels")
    ap.add_argument("--node-has", default="",
                    help="comma-separated packages the node also has (e.g. pandas,scipy,pyarrow,scikit-learn): "
                         "left out with their dependencies, at the versions resolved here")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        ap.error(f"--python-version {args.python_version!r}: give major.minor, e.g. 3.11")

    check_pip()
    pins = pyproject_pins()
    roots, pre = pinned(ROOTS, pins), pinned(PREINSTALLED, pins)
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):
        old.unlink()  # a previous download for another Python must not mix in
    built = build_source_only(roots + pre, args.dest)
    target = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp"]
    for p in platforms(args.platform):
        target += ["--platform", p]
    # Shared dependencies are resolved together with the preinstalled pins, so they fit the node's versions.
    everything = resolve(roots + pre, target, args.dest)
    node_has = [canonical(n) for n in args.node_has.split(",") if n.strip()]
    unknown = [n for n in node_has if n not in everything]
    if unknown:
        sys.exit(f"gpu_wheels: --node-has {unknown}: not among the packages the check needs; drop them")
    preinstalled = resolve(pre + [f"{n}=={everything[n]['version']}" for n in node_has], target, None)
    wanted = {n: i["version"] for n, i in everything.items() if n not in preinstalled}
    if "+" in preinstalled["torch"]["version"] and "triton" in wanted:  # e.g. 2.13.0+cpu from a find-links folder
        print(f"gpu_wheels: note: torch resolved to {preinstalled['torch']['version']} through your pip configuration; "
              "a CUDA build brings triton itself, so the triton wheel here is likely not needed", file=sys.stderr)
    for name in built:
        if name not in wanted:  # built for a package the node turns out to have
            for wheel in args.dest.glob("*.whl"):
                if canonical(wheel.name.split("-")[0]) == name:
                    wheel.unlink()
    to_download = [f"{n}=={v}" for n, v in sorted(wanted.items()) if n not in built]
    pip("download", "--no-deps", "--quiet", "-d", str(args.dest), *target, *to_download)

    # bench/gpu_check.sh reads the first line to refuse wheels for another Python.
    header = f"# python {args.python_version} {args.platform}: bench/gpu_wheels.py, offline install by bench/gpu_check.sh\n"
    (args.dest / "requirements.txt").write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(wanted.items())))
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"gpu_wheels: {len(wheels)} wheels, {size:.1f} MiB in {args.dest} for Python {args.python_version} "
          f"on {args.platform} (built from source: {', '.join(built) or 'none'}; left to the node: "
          f"{len(preinstalled)} packages: {', '.join(PREINSTALLED + tuple(node_has))} and their dependencies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
