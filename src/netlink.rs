//! rtnetlink configuration (stub: being written).
