//! Control requests: `control::parse` on any bytes, then the same bytes through
//! `Engine::handle_request` of a live engine (fake TAP, private network namespace), so
//! add_hostfwd really opens sockets. Properties: no panic, every reply is one JSON object with
//! either "return" or "error", and the engine is left as found (forwards removed after each
//! input, so ids keep increasing and fds do not pile up).
#![no_main]

#[path = "common.rs"]
mod common;

use std::cell::RefCell;
use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use tapwire_proto::control;
use tapwire_proto::config::NetConfig;
use tapwire::engine::{Engine, Lifecycle};
use tapwire::link::tap::Tap;

thread_local! {
    static ENGINE: RefCell<Option<(Engine, OwnedFd)>> = const { RefCell::new(None) };
}

fn check_reply(reply: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(reply).expect("reply is JSON");
    let obj = v.as_object().expect("reply is an object");
    assert_eq!(obj.len(), 1, "{reply}");
    assert!(
        obj.contains_key("return") || obj.contains_key("error"),
        "{reply}"
    );
    v
}

fuzz_target!(init: common::isolate(), |data: &[u8]| {
    let _ = control::parse(data);
    ENGINE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (engine, _guest) = cell.get_or_insert_with(|| {
            let (tap, guest) = common::fake_tap();
            let engine = Engine::new(NetConfig::default(), Tap::from_fd(tap), Lifecycle::default())
                .expect("engine");
            (engine, guest)
        });
        check_reply(&engine.handle_request(data));
        let list = check_reply(&engine.handle_request(br#"{"execute":"list_hostfwd"}"#));
        for e in list["return"]["entries"].as_array().expect("entries") {
            let id = e["id"].as_u64().expect("id");
            let req = format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#);
            let r = check_reply(&engine.handle_request(req.as_bytes()));
            assert!(r.get("return").is_some(), "remove {id}: {r}");
        }
    });
});
