//! Generates the 4 MiB table `bulky` carries: xorshift bytes from a fixed seed, so the
//! component is the same on every build and does not compress away.

use std::io::Write;

const TABLE_BYTES: usize = 4 * 1024 * 1024;

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut table = Vec::with_capacity(TABLE_BYTES);
    while table.len() < TABLE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        table.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::File::create(out.join("table.bin"))
        .and_then(|mut f| f.write_all(&table))
        .expect("cannot write the generated table");
    println!("cargo::rerun-if-changed=build.rs");
}
