# shellcheck shell=bash
# Helpers that assemble a minimal root filesystem from binaries already on this machine, for
# images built FROM scratch: the binaries, exactly the shared libraries `ldd` says they load
# (the dynamic loader included), and the few files in /etc that glibc and TLS clients read.
# Sourced by build-local.sh and by deploy/test/podman-cluster.sh (for its origin and registry).

# rootfs_die MESSAGE: stop with a message on stderr.
rootfs_die() {
  echo "rootfs: $*" >&2
  exit 1
}

# rootfs_libs BINARY: the absolute paths of the shared objects BINARY loads, one a line.
# The vDSO has no path and is skipped; a "not found" library is an error, because the image
# would fail at start-up in a way that is much harder to read than this message.
rootfs_libs() {
  local bin="$1" out
  out="$(ldd "$bin" 2>&1)" || {
    # Static binaries make ldd exit non-zero with "not a dynamic executable": nothing to copy.
    case "$out" in *"not a dynamic executable"* | *"statically linked"*) return 0 ;; esac
    rootfs_die "ldd $bin failed: $out"
  }
  if grep -q 'not found' <<<"$out"; then
    rootfs_die "$bin needs libraries this machine does not have:"$'\n'"$out"
  fi
  awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$out" | sort -u
}

# rootfs_copy ROOT SRC [DEST]: copy file SRC to ROOT/DEST (default: the same path), following
# symlinks so the image holds the real file under the name the loader asks for.
rootfs_copy() {
  local root="$1" src="$2" dest="${3:-$2}"
  [ -e "$src" ] || rootfs_die "missing $src"
  mkdir -p "$root$(dirname "$dest")"
  cp -L --preserve=mode "$src" "$root$dest"
}

# rootfs_add_binary ROOT SRC DEST: the binary at DEST plus every library it loads.
rootfs_add_binary() {
  local root="$1" src="$2" dest="$3" libs lib
  rootfs_copy "$root" "$src" "$dest"
  chmod 0755 "$root$dest"
  # Not a process substitution: an error in rootfs_libs must stop the build here.
  libs="$(rootfs_libs "$src")" || exit 1
  for lib in $libs; do
    rootfs_copy "$root" "$lib"
  done
}

# rootfs_add_base ROOT: the files every image gets. Users root and nonroot (65532, the uid
# distroless images use), so `USER 65532` has a name and tools that look up the user work; an
# nsswitch.conf so glibc resolves names from /etc/hosts (which podman and Kubernetes write)
# before DNS; the CA bundle for HTTPS origins; a sticky world-writable /tmp.
rootfs_add_base() {
  local root="$1" ca=/etc/ssl/certs/ca-certificates.crt
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/root" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
  cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
  [ -s "$ca" ] || rootfs_die "$ca is missing: install the Debian package ca-certificates"
  cp -L "$ca" "$root$ca"
  chmod 0644 "$root$ca" "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
}
