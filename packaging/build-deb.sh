#!/usr/bin/env bash
# Build dist/dagsync_<version>_<arch>.deb: dagsync and all its Python dependencies in a
# self-contained virtualenv at /opt/dagsync, on the system's own python3.
#
#   packaging/build-deb.sh [--out DIR] [--wheel FILE]
#
#   --out DIR     where the .deb goes (default: <repo>/dist)
#   --wheel FILE  package this dagsync wheel instead of building one from the repo
#
# Environment:
#   DEB_PYTHON    interpreter the virtualenv is made with and runs on at the target
#                 (default /usr/bin/python3, i.e. Debian's; needs python3-venv to build)
#   BUILD_PYTHON  python that builds the wheel with `-m build` (default python3; falls back
#                 to `pip wheel` when it has no `build` module)
#   DEBFULLNAME, DEBEMAIL  the Maintainer field
#   DEB_COMPRESS  dpkg-deb compression options (default "-Zxz -z1": xz's default level
#                 takes minutes for the ~50 MB virtualenv and saves only ~15% of size)
#   PIP_*         passed to pip as usual, e.g. PIP_INDEX_URL, or PIP_FIND_LINKS=wheelhouse
#                 with PIP_NO_INDEX=1 for an offline build
#
# Needs: dpkg-deb (dpkg >= 1.19 for --root-owner-group), DEB_PYTHON with venv and
# ensurepip (Debian: python3-venv), and the dependencies' wheels (from PyPI by default).
# Runs as any user; writes nothing outside a temp dir and --out.
#
# Why arch-specific: the virtualenv holds compiled wheels (cryptography, xxhash, PyYAML),
# built for this machine's architecture and for this Python minor version, which is why
# the package depends on that exact python3.X package too.
#
# How the virtualenv gets to /opt/dagsync without building at /opt/dagsync: a venv is
# relocatable except for the absolute paths written into it when it is created and
# filled. The interpreter itself is found through bin/python3 -> /usr/bin/python3.X (an
# absolute symlink that is right on the target as well), and Python derives sys.prefix
# from where pyvenv.cfg sits, not from a stored path. What does store the build path:
# the `#!` lines of bin/ scripts and the activate scripts (rewritten here), pyvenv.cfg's
# `command =` line (rewritten), and the source paths inside .pyc files (recompiled with
# the final path). The build then fails if any file still names the staging dir. This
# avoids the alternatives' problems: building in the real /opt/dagsync needs root and
# would clobber an installed dagsync on the build machine; `venv --copies` would pin a
# copy of the interpreter binary that Debian's python3.X security updates never replace,
# drifting from the stdlib they do update.
set -euo pipefail
umask 022

die() { echo "build-deb: $*" >&2; exit 1; }
say() { echo "build-deb: $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$REPO/dist
WHEEL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --wheel) WHEEL=${2:?--wheel needs a file}; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                   exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

PREFIX=/opt/dagsync
DEB_PYTHON=${DEB_PYTHON:-/usr/bin/python3}
BUILD_PYTHON=${BUILD_PYTHON:-python3}

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
[ -x "$DEB_PYTHON" ] || die "$DEB_PYTHON not found (apt-get install python3 python3-venv)"
# The venv links to the versioned binary, so `python3` moving to a newer minor version
# (a distribution upgrade) cannot silently break it: the package depends on python3.X.
DEB_PYTHON=$(readlink -f "$DEB_PYTHON")
PYVER=$("$DEB_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$DEB_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$DEB_PYTHON is Python $PYVER; dagsync needs >= 3.11"
"$DEB_PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$DEB_PYTHON cannot make virtualenvs (apt-get install python3-venv)"

VERSION=$("$DEB_PYTHON" - "$REPO/dagsync/__init__.py" <<'PY'
import ast, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "__version__" for t in node.targets):
        print(ast.literal_eval(node.value))
        break
else:
    sys.exit("no __version__ in " + sys.argv[1])
PY
)
# A PEP 440 version as a Debian one: 1.2.0rc1 sorts before 1.2.0 with a tilde.
DEB_VERSION=$(echo "$VERSION" | sed -E 's/^([0-9.]+)(a|b|rc)([0-9]+)$/\1~\2\3/; s/\.dev/~dev/')
ARCH=$(dpkg --print-architecture)
DEB=$OUT/dagsync_${DEB_VERSION}_${ARCH}.deb

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dagsync-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE$PREFIX
mkdir -p "$STAGE"

# --- 1. the wheel ----------------------------------------------------------------------
if [ -z "$WHEEL" ]; then
    # Built from a copy, so the repo gets no build/ or egg-info from us.
    mkdir -p "$WORK/src" "$WORK/wheel"
    tar -C "$REPO" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
        --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis . \
        | tar -C "$WORK/src" -xf -
    if "$BUILD_PYTHON" -c 'import build' 2>/dev/null; then
        say "building the wheel with $BUILD_PYTHON -m build"
        "$BUILD_PYTHON" -m build --wheel --outdir "$WORK/wheel" "$WORK/src" >"$WORK/build.log" 2>&1 \
            || { cat "$WORK/build.log" >&2; die "wheel build failed"; }
    else
        say "no 'build' module in $BUILD_PYTHON; building the wheel with pip wheel"
        "$BUILD_PYTHON" -m pip wheel --no-deps -w "$WORK/wheel" "$WORK/src" >"$WORK/build.log" 2>&1 \
            || { cat "$WORK/build.log" >&2; die "wheel build failed"; }
    fi
    WHEEL=$(ls "$WORK"/wheel/dagsync-*.whl)
fi
[ -f "$WHEEL" ] || die "no wheel at $WHEEL"
case "$(basename "$WHEEL")" in
    dagsync-"$VERSION"-*.whl) ;;
    *) die "$WHEEL is not dagsync $VERSION (the repo's version)" ;;
esac

# --- 2. the virtualenv -----------------------------------------------------------------
say "virtualenv for $PREFIX on $DEB_PYTHON (Python $PYVER)"
"$DEB_PYTHON" -m venv "$VENV"
# --no-compile: the bytecode is compiled once below, for the final path.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
    --no-warn-script-location "$WHEEL"
# Records the build machine's temp path of the wheel; without it pip shows a plain version.
rm -f "$VENV"/lib/python*/site-packages/dagsync-*.dist-info/direct_url.json

# Rewrite the build path to the final one in every text file that names it (scripts'
# #! lines, activate scripts, pyvenv.cfg), then recompile the bytecode for the final path.
grep -rlI --null -F "$VENV" "$VENV" | xargs -0 -r "$DEB_PYTHON" -c '
import sys
old, new = sys.argv[1].encode(), sys.argv[2].encode()
for name in sys.argv[3:]:
    with open(name, "rb") as f:
        data = f.read()
    with open(name, "wb") as f:
        f.write(data.replace(old, new))
' "$VENV" "$PREFIX"
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
# A file that does not compile (some packages ship test data that is not Python 3) just
# gets no bytecode, as with pip itself.
"$VENV/bin/python" -m compileall -q -j 0 -s "$STAGE" -p / "$VENV/lib" >"$WORK/compile.log" 2>&1 \
    || say "compileall: some files did not compile (ignored): $(head -c 300 "$WORK/compile.log")"
if grep -rl -F "$STAGE" "$STAGE" >"$WORK/leftover"; then
    head "$WORK/leftover" >&2
    die "files still name the staging dir $STAGE"
fi
# Smoke test through the staging path: the venv itself is relocatable, only #! differs.
GOT=$("$VENV/bin/python" -m dagsync --version)
[ "$GOT" = "dagsync, version $VERSION" ] || die "staged dagsync says '$GOT', not $VERSION"

# --- 3. the rest of the file system ----------------------------------------------------
install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/etc/dagsync" \
    "$STAGE/usr/share/doc/dagsync/examples" "$STAGE/usr/share/bash-completion/completions" \
    "$STAGE/usr/share/zsh/vendor-completions"
ln -s "$PREFIX/bin/dagsync" "$STAGE/usr/bin/dagsync"
install -m 0644 "$REPO/packaging/dagsync.service" "$STAGE/lib/systemd/system/dagsync.service"
install -m 0644 "$REPO/config.example.yaml" "$STAGE/etc/dagsync/dagsync.yaml.example"
install -m 0644 "$REPO/packaging/dagsync.cron" "$STAGE/usr/share/doc/dagsync/examples/dagsync.cron"
install -m 0644 "$REPO/config.example.yaml" "$STAGE/usr/share/doc/dagsync/examples/"
install -m 0644 "$REPO/packaging/README.md" "$STAGE/usr/share/doc/dagsync/README.packaging.md"
if [ -f "$REPO/README.md" ]; then
    install -m 0644 "$REPO/README.md" "$STAGE/usr/share/doc/dagsync/README.md"
fi
cat >"$STAGE/usr/share/doc/dagsync/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dagsync

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

Files: opt/dagsync/lib/*
Comment: Python packages dagsync depends on, each under its own license, which is
 in its *.dist-info directory.
EOF
# Shell completion, generated now (click's scripts are static; they call dagsync back).
if ! _DAGSYNC_COMPLETE=bash_source "$VENV/bin/python" "$VENV/bin/dagsync" \
        >"$STAGE/usr/share/bash-completion/completions/dagsync" 2>"$WORK/compl.log" \
   || ! _DAGSYNC_COMPLETE=zsh_source "$VENV/bin/python" "$VENV/bin/dagsync" \
        >"$STAGE/usr/share/zsh/vendor-completions/_dagsync" 2>>"$WORK/compl.log"; then
    cat "$WORK/compl.log" >&2
    die "generating shell completion failed"
fi

# --- 4. DEBIAN/ --------------------------------------------------------------------------
install -d "$STAGE/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$REPO/packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
echo /etc/dagsync/dagsync.yaml.example >"$STAGE/DEBIAN/conffiles"
INSTALLED_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: dagsync
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: ${DEBFULLNAME:-dagsync developers} <${DEBEMAIL:-root@localhost}>
Installed-Size: $INSTALLED_KB
Depends: python3 (>= 3.11), python$PYVER, openssh-client, adduser
Recommends: openssh-server
Suggests: cron
Section: admin
Priority: optional
Description: keeps Apache Airflow DAG folders identical on every node
 dagsync replicates the DAG folders (and plugins/, or any folder) of an Airflow
 cluster among all masters and workers over SSH, with last-writer-wins conflict
 handling that archives the losing version, atomic file replacement, and
 tolerance of nodes that are down. It replaces csync2 + lsyncd + cron.
 .
 This package ships dagsync with its Python dependencies in a virtualenv under
 /opt/dagsync, a systemd unit (not enabled), a cron.d example and shell completion.
EOF

mkdir -p "$OUT"
# shellcheck disable=SC2086  # DEB_COMPRESS is a list of options
dpkg-deb ${DEB_COMPRESS:--Zxz -z1} --build --root-owner-group "$STAGE" "$DEB" >&2
echo "$DEB"
