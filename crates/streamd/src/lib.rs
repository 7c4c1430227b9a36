//! earshot server.
