//! Unit tests of `kernels/fetch.rs`.
use super::madison_version;

#[test]
fn madison_picks_the_suite_asked_for() {
    let text = " linux-image-cloud-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n \
                linux-image-cloud-amd64 |   6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n \
                linux-image-cloud-amd64 |  5.10.223-1 | http://deb.debian.org/debian bullseye/main amd64 Packages\n";
    assert_eq!(madison_version(text, "bookworm").as_deref(), Some("6.1.176-1"));
    assert_eq!(madison_version(text, "bookworm-backports").as_deref(), Some("6.12.95-1~bpo12+1"));
    assert_eq!(madison_version(text, "bullseye").as_deref(), Some("5.10.223-1"));
    assert_eq!(madison_version(text, "trixie"), None);
}
