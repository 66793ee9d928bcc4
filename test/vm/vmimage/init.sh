#!/bin/sh
# Early init of the envd test VM. The kernel runs it as PID 1 from the
# initramfs; it does only what envd deliberately does not do (spec
# lifecycle.md §2.2: the host, or the image, configures the network; the
# image provides its root filesystem) and then replaces itself with envd,
# which stays PID 1 for the VM's life. Everything else (mounts, cgroups,
# reaping, shutdown) is envd's job.

# The stock kernel has the virtio drivers and ext4 as modules; the image
# builder wrote them in dependency order. (Debian's kernel lacks
# VIRTIO_MMIO_CMDLINE_DEVICES, so the devices are found through the ACPI
# tables of QEMU's microvm, not virtio_mmio.device= words.)
while read -r m; do
	insmod "/lib/modules/$m.ko" || echo "early-init: insmod $m failed" >/dev/console
done </lib/modules/load-order

# The guest side of QEMU's user-mode network: address 10.0.2.15, gateway
# 10.0.2.2 (the hostfwd and guestfwd rules of the harness assume these).
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1; do
	n=$((n + 1))
	if [ "$n" -gt 200 ]; then
		echo "early-init: eth0 did not appear" >/dev/console
		break
	fi
	sleep 0.05
done
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2

# The root filesystem is the ext4 disk (/dev/vda) holding the same tree as
# this initramfs, so that envd's "/" is a disk filesystem as in a sandbox
# (POST /fsfreeze freezes it; an initramfs cannot be frozen). devtmpfs is
# mounted only to find the disk and unmounted again: envd mounts /dev
# itself. Kernel command-line words the kernel did not recognise
# (ENVD_MMDS_ADDRESS=…) are in our environment and reach envd through exec.
mount -t devtmpfs devtmpfs /dev
n=0
while [ ! -b /dev/vda ] && [ "$n" -lt 100 ]; do
	n=$((n + 1))
	sleep 0.05
done
if [ -b /dev/vda ] && mount -t ext4 /dev/vda /newroot; then
	umount /dev
	exec switch_root /newroot /usr/local/bin/envd "$@"
fi
echo "early-init: no root disk; envd runs from the initramfs" >/dev/console
umount /dev
exec /usr/local/bin/envd "$@"
