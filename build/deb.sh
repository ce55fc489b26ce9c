#!/bin/sh
# deb.sh ARCH...: build dist/latch_<version>_<debarch>.deb for each ARCH (amd64 arm64 armv7 armv6
# 386; none = all) from the binaries of build.sh, and print each package's installed size.
#
# A binary missing from dist/, or older than a Go source file, is built here. The package installs
# /usr/bin/latch, /lib/systemd/system/latch.service and /etc/default/latch (a conffile); its maintainer scripts
# enable latch.service (also in a chroot, where systemd is not running) and start it when systemd
# runs, the way debhelper's generated scripts do.
#
# Environment: VERSION (else git describe), DIST (output folder, default dist/),
# MAINTAINER (the package's Maintainer field).
#
# Architectures: armv7 is Debian's armhf; armv6 is packaged as armel, the Debian port that runs on
# ARMv6 (a static binary does not depend on the float ABI; on Raspberry Pi OS, whose armhf is
# ARMv6, install it with dpkg --force-architecture).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dist=${DIST:-$root/dist}
mkdir -p "$dist"
maintainer=${MAINTAINER:-latch maintainers <root@localhost>}

raw=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo devel)}
# A Debian version must start with a digit and, without a revision, hold no '-'.
case $raw in
v[0-9]*) raw=${raw#v} ;;
esac
case $raw in
[0-9]*.[0-9]*) version=$(printf '%s' "$raw" | tr -- '-' '+') ;;
*) version=0.0.0~git$(printf '%s' "$raw" | tr -- '-' '+' | tr -cd 'A-Za-z0-9.+~') ;;
esac

[ $# -gt 0 ] || set -- amd64 arm64 armv7 armv6 386

printf '%-8s %-8s %14s %12s  %s\n' arch debarch installed-KiB deb-bytes package >&2
summary=
for arch in "$@"; do
	case $arch in
	amd64) debarch=amd64 goarch=amd64 goarm= ;;
	arm64) debarch=arm64 goarch=arm64 goarm= ;;
	armv7) debarch=armhf goarch=arm goarm=7 ;;
	armv6) debarch=armel goarch=arm goarm=6 ;;
	386) debarch=i386 goarch=386 goarm= ;;
	*) echo "deb.sh: unknown architecture $arch (want amd64 arm64 armv7 armv6 386)" >&2; exit 2 ;;
	esac

	bin=$dist/latch-linux-$arch
	[ -f "$bin" ] || bin=$root/dist/latch-linux-$arch
	stale=
	if [ -f "$bin" ] && [ -n "$(find "$root" -path "$root/dist" -prune -o \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin" -print | head -n 1)" ]; then
		stale=yes
	fi
	if [ ! -f "$bin" ] || [ -n "$stale" ]; then
		bin=$dist/latch-linux-$arch
		if [ -n "$stale" ]; then
			echo "deb.sh: $bin is older than the sources; building it again" >&2
		else
			echo "deb.sh: no $bin; building it" >&2
		fi
		if ! (cd "$root" && env CGO_ENABLED=0 GOOS=linux GOARCH=$goarch ${goarm:+GOARM=$goarm} \
			go build -trimpath -ldflags="-s -w -X main.version=$version" -o "$bin.tmp" .); then
			rm -f "$bin.tmp"
			echo "deb.sh: build latch for $arch failed" >&2
			exit 1
		fi
		mv "$bin.tmp" "$bin"
	fi

	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	pkg=$stage/pkg
	install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/default" \
		"$pkg/usr/share/doc/latch/examples"
	install -m 0755 "$bin" "$pkg/usr/bin/latch"
	install -m 0644 "$root/build/systemd/latch.service" "$pkg/lib/systemd/system/latch.service"
	install -m 0644 "$root/build/systemd/latch.default" "$pkg/etc/default/latch"
	install -m 0644 "$root/build/systemd/example-app.service" "$pkg/usr/share/doc/latch/examples/example-app.service"

	size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
	cat >"$pkg/DEBIAN/control" <<CONTROL
Package: latch
Version: $version
Architecture: $debarch
Maintainer: $maintainer
Installed-Size: $size
Section: admin
Priority: optional
Description: over-the-air update agent for embedded Linux boards
 latch downloads new releases of a board's services in the background and
 applies them only when the applications allow it, honouring balena-style
 update locks (/tmp/balena/updates.lock). It runs as a systemd Type=notify
 service with a watchdog.
CONTROL
	echo /etc/default/latch >"$pkg/DEBIAN/conffiles"

	cat >"$pkg/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper unmask latch.service >/dev/null || true
		# was-enabled is true on a first install: enable it; on upgrades keep the admin's choice.
		if deb-systemd-helper --quiet was-enabled latch.service; then
			deb-systemd-helper enable latch.service >/dev/null || true
		else
			deb-systemd-helper update-state latch.service >/dev/null || true
		fi
	elif command -v systemctl >/dev/null 2>&1; then
		# Works offline too (in a chroot or image build): it only creates the symlinks.
		systemctl enable latch.service >/dev/null 2>&1 || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if command -v deb-systemd-invoke >/dev/null 2>&1; then
			deb-systemd-invoke restart latch.service >/dev/null ||
				echo "latch: latch.service did not start; see: journalctl -u latch.service" >&2
		else
			systemctl restart latch.service >/dev/null ||
				echo "latch: latch.service did not start; see: journalctl -u latch.service" >&2
		fi
	fi
fi
exit 0
SCRIPT
	cat >"$pkg/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	if command -v deb-systemd-invoke >/dev/null 2>&1; then
		deb-systemd-invoke stop latch.service >/dev/null || true
	else
		systemctl stop latch.service >/dev/null || true
	fi
fi
exit 0
SCRIPT
	cat >"$pkg/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if command -v deb-systemd-helper >/dev/null 2>&1; then
	if [ "$1" = remove ]; then
		deb-systemd-helper mask latch.service >/dev/null || true
	fi
	if [ "$1" = purge ]; then
		deb-systemd-helper purge latch.service >/dev/null || true
		deb-systemd-helper unmask latch.service >/dev/null || true
	fi
fi
if [ "$1" = purge ]; then
	# The journal and downloads; locks live in /tmp and go with the next boot.
	rm -rf /var/lib/latch
fi
exit 0
SCRIPT
	chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

	out=$dist/latch_${version}_$debarch.deb
	dpkg-deb --root-owner-group -Zxz --build "$pkg" "$out" >/dev/null
	rm -rf "$stage"
	trap - EXIT
	printf '%-8s %-8s %14s %12s  %s\n' "$arch" "$debarch" "$size" "$(stat -c %s "$out")" "$out" >&2
	summary="$summary $out"
done
echo "deb.sh: built$summary" >&2
