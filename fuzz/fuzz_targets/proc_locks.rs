//! `/proc/locks`: `steer::state::lock_holder_in`, asked for the inodes the text
//! names and for one taken from the input's first 8 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer::state::lock_holder_in;

fuzz_target!(|data: &[u8]| {
    let ino = data.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let text = String::from_utf8_lossy(data.get(8..).unwrap_or_default());
    let _ = lock_holder_in(&text, ino);
    let named = text.split_whitespace().filter_map(|f| f.rsplit(':').next()?.parse::<u64>().ok());
    for ino in named.take(64) {
        let _ = lock_holder_in(&text, ino);
    }
});
