//! Namespace helper (stub: being written).
