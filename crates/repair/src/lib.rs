//! Loss repair for earshot, sans-IO: Reed-Solomon parity over groups of audio datagrams
//! ([`fec`]) and selective retransmission ([`retransmit`]), put together for the server
//! ([`sender`]) and the listener ([`receiver`]).
//!
//! Nothing here opens a socket or reads a clock: the server's endpoint and the listener's
//! session pass `now` in and send what these types return, so every rule is tested on
//! simulated time.

pub mod fec;
pub mod receiver;
pub mod retransmit;
pub mod sender;

pub use fec::{
    FecDecoder, FecEncoder, FecParams, ParamsError, ParityRejected, ParityShard, Recovered,
    check_fits, default_fec, parse_fec,
};
pub use receiver::{Delivery, Origin, Receiver, ReceiverStats};
pub use retransmit::{History, NackConfig, NackPlanner, NackRequest, NackStats, TokenBucket};
pub use sender::{Resend, Sender, SenderConfig, SenderStats};
