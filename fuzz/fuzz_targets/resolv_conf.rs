//! The DNS relay's resolv.conf parser: any text. Properties: no panic, and every nameserver
//! returned is written somewhere in the text (after a `nameserver` keyword).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapwire_proto::dns::parse_resolv_conf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let servers = parse_resolv_conf(&text);
    if !servers.is_empty() {
        assert!(text.contains("nameserver"));
    }
    assert!(servers.len() <= text.lines().count());
});
