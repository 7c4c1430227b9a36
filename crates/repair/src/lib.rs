//! Loss repair for earshot, sans-IO: Reed-Solomon parity over groups of audio datagrams
//! ([`fec`]) and selective retransmission ([`retransmit`]).
//!
//! Nothing here opens a socket or reads a clock: the server's endpoint and the listener's
//! session pass `now` in and send what these types return, so every rule is tested on
//! simulated time.

pub mod fec;
pub mod retransmit;

pub use fec::{
    FecDecoder, FecEncoder, FecParams, ParamsError, ParityRejected, ParityShard, Recovered,
};
pub use retransmit::{History, NackConfig, NackPlanner, NackRequest, NackStats, TokenBucket};
