//! Load generator for spate; the load-generator issue fills this crate.
