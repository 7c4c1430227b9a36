//! listen binary.
fn main() {}
