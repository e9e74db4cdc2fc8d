//! The guest's link: [`tap`] (`/dev/net/tun` with a virtio-net header), [`netlink`]
//! (addresses, routes, MTU for `-c`), [`device`] (the smoltcp device adapter over the TAP).

pub mod device;
pub mod netlink;
pub mod tap;
