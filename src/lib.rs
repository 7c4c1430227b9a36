//! earshot: umbrella package owning examples/ and tests/.
pub mod load;
