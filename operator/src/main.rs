//! `zbase-operator`: the controller binary.
fn main() {}
