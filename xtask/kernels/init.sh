#!/bin/busybox sh
# PID 1 of the VMs `cargo xtask kernels` boots: mounts what steer needs, loads
# the sock_diag modules, runs smoke.sh, powers off. ttyS0 is the console
# (progress), ttyS1 carries the STEER-RESULT lines to the host.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
if grep -q steer.probe /proc/cmdline; then
    echo "STEER-RESULT probe=ok" > /dev/ttyS1
    poweroff -f
fi
# inet_diag before tcp_diag: steer lists sockets through NETLINK_SOCK_DIAG.
for module in /lib/modules/*.ko; do
    insmod "$module" || echo "init: insmod $module failed"
done
STEER_RESULTS=/dev/ttyS1 STEER_BIN=/bin SMOKE_DAEMON_ARGS="--netns all" sh /smoke.sh
poweroff -f
