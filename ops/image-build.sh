#!/bin/sh
# The image's build steps, shared by the Containerfile and tests/k8s/test_image.py (which runs
# them on the host into a clean prefix):
#   ops/image-build.sh wheel  SRC OUT      build heatcache's wheel with its compiled extensions
#   ops/image-build.sh install WHEEL PREFIX [--no-deps]
#                                          install it (and its dependencies) under PREFIX
#   ops/image-build.sh caps BINDIR         the sniffer's interpreter: BINDIR/python3-capture, a
#                                          copy of python3 with cap_net_raw,cap_net_admin+ep
set -eu
PYTHON=${PYTHON:-python3}
step=$1; shift
case "$step" in
  wheel)
    src=$1 out=$2
    # pip builds in isolation with the setuptools pyproject.toml asks for; gcc builds */_*.c
    "$PYTHON" -m pip wheel --no-deps --wheel-dir "$out" "$src"
    ;;
  install)
    wheel=$1 prefix=$2 deps=${3:-}
    # --ignore-installed: never uninstall a heatcache the build interpreter already has (a developer
    # venv running the test) while installing into PREFIX
    "$PYTHON" -m pip install --no-compile --ignore-installed --prefix "$prefix" ${deps:+--no-deps} "$wheel"
    ;;
  caps)
    bindir=$1
    real=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    # a copy, not a link: file capabilities belong to the inode, and only the sniffer runs it
    cp "$real" "$bindir/python3-capture"
    setcap cap_net_raw,cap_net_admin+ep "$bindir/python3-capture"
    ;;
  *)
    echo "usage: $0 wheel SRC OUT | install WHEEL PREFIX [--no-deps] | caps BINDIR" >&2
    exit 2
    ;;
esac
