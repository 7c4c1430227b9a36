//! earshot client.
