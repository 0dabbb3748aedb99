//! Unit tests of `lib.rs`.
use super::is_bpffs_mounted;

#[test]
fn bpffs_detection_reads_mountpoint_and_type() {
    let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
    assert!(is_bpffs_mounted(mounts, "/sys/fs/bpf"));
    assert!(!is_bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n", "/sys/fs/bpf"));
    assert!(!is_bpffs_mounted("bpf /mnt/bpf bpf rw 0 0\n", "/sys/fs/bpf"));
}
