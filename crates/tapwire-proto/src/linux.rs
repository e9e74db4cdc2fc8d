//! The few Linux ABI numbers the protocol logic speaks in (errno values a refused `connect`
//! returns, address families in a `sockaddr`), written out so that this crate needs no `libc`.
//! The daemon's `sys` tests check every one against `libc`.
#![forbid(unsafe_code)]

pub const EINVAL: i32 = 22;
pub const ENETUNREACH: i32 = 101;
pub const ECONNREFUSED: i32 = 111;
pub const EHOSTUNREACH: i32 = 113;
pub const EAFNOSUPPORT: i32 = 97;

pub const AF_UNSPEC: i32 = 0;
pub const AF_UNIX: i32 = 1;
pub const AF_INET: i32 = 2;
pub const AF_INET6: i32 = 10;
