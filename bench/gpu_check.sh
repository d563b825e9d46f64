#!/usr/bin/env bash
# The GPU check in one command (see bench/gpu_check.py for what it runs and prints):
#
#   bench/gpu_check.sh --wheels DIR [--device cuda] [gpu_check.py options]   # air-gapped GPU node
#   bench/gpu_check.sh --device cpu                                          # CI smoke, project venv
#
# --wheels DIR: the folder `make gpu-wheels` filled (copied to the node). Installs DIR/requirements.txt
# offline (--no-index) into a venv (.gpu-venv, or $GPU_CHECK_VENV) that also sees the node's own
# site-packages, where torch, transformers, peft and accelerate are; then runs the check with it.
# Without --wheels, $PYTHON (default python3) must already have the project's dependencies.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
wheels=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [[ -n "$wheels" ]]; then
  start=$SECONDS
  reqs="$wheels/requirements.txt"
  [[ -f "$reqs" ]] || { echo "gpu_check: $reqs missing: fill the folder with 'make gpu-wheels' first" >&2; exit 2; }
  # The first line names the Python the wheels were downloaded for (bench/gpu_wheels.py writes it).
  want="$(sed -n '1s/^# python \([0-9.]*\) .*/\1/p' "$reqs")"
  have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$want" != "$have" ]]; then
    echo "gpu_check: $wheels holds wheels for Python ${want:-?} but $python is $have;" \
         "rerun 'make gpu-wheels PYTHON_VERSION=$have' or set PYTHON" >&2
    exit 2
  fi
  venv="${GPU_CHECK_VENV:-$repo/.gpu-venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
    # The node's site-packages (system, conda env or venv alike) after the venv's own: pip and the
    # check see the preinstalled torch stack, and never touch it.
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$python" -c 'import site, sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
      > "$site/_node_site_packages.pth"
    # ensurepip (Python < 3.12) leaves an old setuptools in the venv that would shadow the node's
    # (torch wants setuptools >= 77): drop it when the node has its own.
    if "$python" -c 'import setuptools' 2>/dev/null; then
      "$venv/bin/python" -m pip uninstall --quiet --yes setuptools 2>/dev/null || true
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" -r "$reqs"
  python="$venv/bin/python"
  export GPU_CHECK_INSTALL_S=$((SECONDS - start))
  echo "gpu_check: installed $(grep -vc '^#' "$reqs") packages from $wheels into $venv in ${GPU_CHECK_INSTALL_S}s"
fi

cd "$repo"
exec "$python" bench/gpu_check.py ${args[@]+"${args[@]}"}
