//! earshot: the umbrella package. It owns `examples/` and `tests/`, and the tools they share:
//! the impairment proxy, the load generator and the headless-audio test harness.

pub mod impair;
pub mod load;
pub mod testing;
