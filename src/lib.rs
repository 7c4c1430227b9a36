//! earshot: umbrella package owning examples/ and tests/.
