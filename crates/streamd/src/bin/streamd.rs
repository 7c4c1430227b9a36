//! streamd binary.
fn main() {}
