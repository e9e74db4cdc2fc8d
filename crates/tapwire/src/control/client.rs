//! `tapwire ctl`: a command-line client of the control socket (tapwire's or slirp4netns's).
//!
//! # Theory of operation
//! One request per connection, as the protocol says: connect, write the JSON request, shut
//! down the write side, read the reply to EOF (10 s timeout), close. The reply is printed as
//! is with `--json`, otherwise as text: tables for lists, `key: value` lines for counters. An
//! error reply prints its desc to stderr and exits 1.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{ControlAction, ControlArgs};

/// The request JSON for an action.
pub fn request(action: &ControlAction) -> Value {
    match action {
        ControlAction::AddHostfwd {
            publish,
            guest_addr,
        } => {
            let mut args = json!({
                "proto": publish.proto.as_str(),
                "host_addr": publish.host_addr.to_string(),
                "host_port": publish.host_port,
                "guest_port": publish.guest_port,
            });
            if let Some(g) = guest_addr {
                args["guest_addr"] = json!(g.to_string());
            }
            json!({ "execute": "add_hostfwd", "arguments": args })
        }
        ControlAction::ListHostfwd => json!({ "execute": "list_hostfwd" }),
        ControlAction::RemoveHostfwd { id } => {
            json!({ "execute": "remove_hostfwd", "arguments": { "id": id } })
        }
        ControlAction::Connections => json!({ "execute": "list_connections" }),
        ControlAction::Stats => json!({ "execute": "get_stats" }),
    }
}

/// Send one request and return the raw reply.
pub fn call(path: &std::path::Path, req: &Value) -> std::io::Result<String> {
    let ctx = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut s = UnixStream::connect(path).map_err(ctx)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(ctx)?;
    s.write_all(req.to_string().as_bytes()).map_err(ctx)?;
    s.shutdown(Shutdown::Write).map_err(ctx)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(ctx)?;
    Ok(reply)
}

/// Text rendering of a successful reply.
pub fn render(action: &ControlAction, ret: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match action {
        ControlAction::AddHostfwd { .. } => format!("id {}\n", s(&ret["id"])),
        ControlAction::RemoveHostfwd { id } => format!("removed {id}\n"),
        ControlAction::ListHostfwd => {
            // slirp4netns replies without the "return" wrapper; accept both.
            let mut out = String::from("ID\tPROTO\tHOST\tGUEST\n");
            for e in ret["entries"].as_array().into_iter().flatten() {
                out += &format!(
                    "{}\t{}\t{}:{}\t{}:{}\n",
                    s(&e["id"]),
                    s(&e["proto"]),
                    s(&e["host_addr"]),
                    s(&e["host_port"]),
                    s(&e["guest_addr"]),
                    s(&e["guest_port"])
                );
            }
            out
        }
        ControlAction::Connections => {
            let mut out = String::from("PROTO\tGUEST\tREMOTE\tHOST\tFROM_GUEST\tTO_GUEST\tAGE_S\n");
            for c in ret["connections"].as_array().into_iter().flatten() {
                let from = if c["proto"] == "tcp" {
                    &c["bytes_from_guest"]
                } else {
                    &c["packets_from_guest"]
                };
                let to = if c["proto"] == "tcp" {
                    &c["bytes_to_guest"]
                } else {
                    &c["packets_to_guest"]
                };
                out += &format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    s(&c["proto"]),
                    s(&c["guest"]),
                    s(&c["remote"]),
                    s(&c["host"]),
                    s(from),
                    s(to),
                    s(&c["age_s"])
                );
            }
            out
        }
        ControlAction::Stats => {
            let mut out = String::new();
            flatten("", ret, &mut out);
            out
        }
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => *out += &format!("{prefix}: {other}\n"),
    }
}

/// Run `tapwire ctl`; returns the exit status.
pub fn run(args: &ControlArgs) -> i32 {
    let reply = match call(&args.control_socket, &request(&args.action)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapwire ctl: {e}");
            return 1;
        }
    };
    let v: Value = match serde_json::from_str(&reply) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("tapwire ctl: the daemon's reply is not JSON: {reply:?}");
            return 1;
        }
    };
    if let Some(desc) = v.get("error").map(|e| e.get("desc").unwrap_or(e)) {
        if args.json {
            println!("{reply}");
        }
        eprintln!(
            "tapwire ctl: {}",
            desc.as_str().unwrap_or(&desc.to_string())
        );
        return 1;
    }
    if args.json {
        println!("{reply}");
    } else {
        let ret = v.get("return").unwrap_or(&v);
        print!("{}", render(&args.action, ret));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_proto::config::{Proto, Publish};

    #[test]
    fn add_request_shape() {
        let a = ControlAction::AddHostfwd {
            publish: Publish {
                proto: Proto::Udp,
                host_addr: "127.0.0.1".parse().unwrap(),
                host_port: 5353,
                guest_port: 53,
            },
            guest_addr: Some("10.0.2.100".parse().unwrap()),
        };
        assert_eq!(
            request(&a).to_string(),
            r#"{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"127.0.0.1","host_port":5353,"guest_port":53,"guest_addr":"10.0.2.100"}}"#
        );
    }

    #[test]
    fn renders_lists_with_and_without_return_wrapper() {
        let entries = json!({"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}]});
        let text = render(&ControlAction::ListHostfwd, &entries);
        assert!(
            text.contains("1\ttcp\t0.0.0.0:8080\t10.0.2.100:80"),
            "{text}"
        );
        let stats = render(
            &ControlAction::Stats,
            &json!({"frames_in": 3, "drops": {"checksum": 1}}),
        );
        assert_eq!(stats, "frames_in: 3\ndrops.checksum: 1\n");
    }
}
