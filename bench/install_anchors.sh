#!/usr/bin/env bash
# Installs the tools bench/run.py compares dagsync with, from Debian's packages (idempotent:
# apt runs only when a binary is missing, or with --force). Adapted from
# ../shared/bench-anchors/install.sh (csync2 left out: bench/run.py does not measure it).
set -euo pipefail
# python3-venv and python3-dev: the agents run on Debian's python3, as the package installs
# them (bench/agent_python.py), in a venv of their own with dagsync's C helper built.
PKGS=(rsync openssh-server openssh-client unison syncthing lsyncd procps python3-venv python3-dev)
BINS=(/usr/bin/rsync /usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen /usr/bin/unison
      /usr/bin/syncthing /usr/bin/lsyncd /usr/bin/pgrep)
missing=0
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "missing: $b"; missing=1; }; done
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || { echo "missing: python3-venv"; missing=1; }
/usr/bin/python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(
    os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || { echo "missing: python3-dev"; missing=1; }
if [ "$missing" = 1 ] || [ "${1:-}" = "--force" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d in containers denies service starts; the distro's sshd/syncthing services
  # are never wanted here anyway (the benchmark starts private instances on 127.0.0.1)
  apt-get install -y -q --no-install-recommends "${PKGS[@]}"
fi
mkdir -p /run/sshd && chmod 0755 /run/sshd
echo "anchor tools present"
