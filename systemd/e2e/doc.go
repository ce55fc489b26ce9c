// Package e2e holds the end-to-end test of latch on a real systemd: the .deb installed in a
// systemd-nspawn container (a Debian rootfs cached outside the repository), latch.service with
// READY=1, STATUS= and its watchdog, a demo application of two units updated over D-Bus under its
// own balena-style update lock, holds that survive a reboot, and reboots refused while a lock is
// held.
//
// It has no code of its own: TestSystemdEndToEnd runs as root wherever systemd-nspawn and the
// rootfs can be had (CI), and skips, saying what was not tested, where they cannot. The demo
// application it installs lives in build/systemd/demo. LATCH_NSPAWN_ARCH=arm64 (or armhf) runs
// the same test in a foreign rootfs through qemu-user, with that architecture's .deb.
package e2e
