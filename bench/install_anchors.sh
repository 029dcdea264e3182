#!/usr/bin/env bash
# Installs the tools bench/run.py compares dagsync with, from Debian's packages (idempotent:
# apt runs only when a binary is missing, or with --force). Adapted from
# ../shared/bench-anchors/install.sh (csync2 left out: bench/run.py does not measure it).
set -euo pipefail
PKGS=(rsync openssh-server openssh-client unison syncthing lsyncd procps)
BINS=(/usr/bin/rsync /usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen /usr/bin/unison
      /usr/bin/syncthing /usr/bin/lsyncd /usr/bin/pgrep)
missing=0
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "missing: $b"; missing=1; }; done
if [ "$missing" = 1 ] || [ "${1:-}" = "--force" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d in containers denies service starts; the distro's sshd/syncthing services
  # are never wanted here anyway (the benchmark starts private instances on 127.0.0.1)
  apt-get install -y -q --no-install-recommends "${PKGS[@]}"
fi
mkdir -p /run/sshd && chmod 0755 /run/sshd
echo "anchor tools present"
