//! earshot: umbrella package owning examples/ and tests/.

pub mod impair;
pub mod testing;
