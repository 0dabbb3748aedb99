//! Unit tests of `unit.rs`: the check fails on what `systemd-analyze verify` only prints.
use std::fs;

use super::{UNIT, check};
use crate::util;

#[test]
fn verify_fails_on_a_misspelt_key() {
    if util::probe(util::cmd("systemd-analyze").arg("--version")).is_none() {
        eprintln!("skipping: no systemd-analyze (apt-get install systemd)");
        return;
    }
    let text = fs::read_to_string(util::workspace_root().join(UNIT)).expect("read the unit");
    // /bin/true exists everywhere, so only the misspelling is left to find.
    let good = text.replace(super::INSTALLED_BIN, "/bin/true");
    let dir = std::env::temp_dir().join(format!("xtask-unit-{}", std::process::id()));
    for (name, body, ok) in
        [("good", good.clone(), true), ("bad", good.replace("ProtectClock=", "ProtectClok="), false)]
    {
        let sub = dir.join(name);
        fs::create_dir_all(&sub).expect("temp dir");
        let unit = sub.join("steer.service");
        fs::write(&unit, body).expect("write unit");
        let result = check(&unit);
        assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
    }
    let _ = fs::remove_dir_all(&dir);
}
