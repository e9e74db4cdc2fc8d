//! TAP device (stub: being written).
