//! No input makes the decoder allocate more than the datagram holds (bincode 2 decodes a byte
//! string without a limit by allocating whatever length its prefix claims). A counting global allocator records the largest single allocation made
//! while decoding hostile inputs.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use proto::limits::MAX_DATAGRAM;
use proto::*;

struct Tracking;

thread_local! {
    /// Only allocations on a measuring thread count: the test harness allocates on others.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Largest allocation seen on this thread while measuring (per thread, so that tests
    /// running in parallel do not see each other's allocations).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// How many allocations this thread made while measuring.
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    if MEASURING.with(Cell::get) {
        LARGEST.with(|l| l.set(l.get().max(size)));
        COUNT.with(|c| c.set(c.get() + 1));
    }
}

/// Largest single allocation `f` makes on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    COUNT.with(|c| c.set(0));
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (out, LARGEST.with(Cell::get))
}

// SAFETY: forwards every call unchanged to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

fn header(t: u8) -> Vec<u8> {
    vec![b'E', b'S', proto::VERSION, t, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// A valid packet whose last field is an empty byte string or text, with that field's length
/// prefix (its last 8 bytes) replaced by `claim`.
fn claiming(msg: Message, claim: u64) -> Vec<u8> {
    let mut b = proto::encode_to_bytes(&Packet::new(0, msg))
        .unwrap()
        .to_vec();
    let n = b.len();
    assert_eq!(b[n - 8..], [0; 8], "the last field is empty");
    b[n - 8..].copy_from_slice(&claim.to_le_bytes());
    b
}

fn info() -> StreamInfo {
    StreamInfo {
        sample_rate: 48_000,
        channels: 2,
        codec: AudioCodec::Pcm,
        interval_us: 20_000,
        frames_per_packet: 240,
        total_frames: None,
        start_seq: 0,
        start_ts: 0,
        timeline: Timeline::default(),
        playout_delay_us: 50_000,
        min_delay_us: 20_000,
        repair: Repair::default(),
        multicast: None,
        title: String::new(),
    }
}

#[test]
fn hostile_length_prefixes_allocate_nothing_large() {
    let mut inputs = Vec::new();
    for claim in [
        100u64,
        4000,
        8000,
        1 << 16,
        1 << 20,
        1 << 30,
        1 << 40,
        u64::MAX,
    ] {
        // Every length-prefixed field of v2: Audio and Resent payload, Connect padding, Join
        // name and noise, Welcome noise and title, Error text, Parity shard, Sealed ciphertext.
        let empty = Bytes::new();
        let audio = Audio {
            ts: 0,
            payload: empty.clone(),
        };
        inputs.push(claiming(Message::Audio(audio.clone()), claim));
        inputs.push(claiming(Message::Resent(audio), claim));
        inputs.push(claiming(
            Message::Connect(Connect {
                max_version: 2,
                padding: empty.clone(),
            }),
            claim,
        ));
        inputs.push(claiming(Message::Join(Join::new([0; COOKIE_LEN])), claim));
        let mut name = header(3);
        name.extend_from_slice(&[0; COOKIE_LEN]);
        name.extend_from_slice(&claim.to_le_bytes());
        inputs.push(name);
        let mut noise = header(4);
        noise.extend_from_slice(&[0; TOKEN_LEN]);
        noise.extend_from_slice(&claim.to_le_bytes());
        inputs.push(noise);
        inputs.push(claiming(
            Message::Welcome(Welcome {
                token: [0; TOKEN_LEN],
                noise: empty.clone(),
                info: info(),
            }),
            claim,
        ));
        inputs.push(claiming(
            Message::Error(ErrorMsg {
                code: ErrorCode::Internal,
                text: String::new(),
            }),
            claim,
        ));
        inputs.push(claiming(
            Message::Parity(Parity {
                group_seq: 0,
                k: 4,
                m: 1,
                index: 0,
                shard: empty.clone(),
            }),
            claim,
        ));
        inputs.push(claiming(
            Message::Sealed(Sealed {
                key_id: 1,
                inner_type: 6,
                ciphertext: empty,
            }),
            claim,
        ));
    }
    let longest = inputs.iter().map(Vec::len).max().unwrap();
    let mut results = Vec::with_capacity(inputs.len());
    let ((), largest) =
        largest_allocation(|| results.extend(inputs.iter().map(|i| (i[3], proto::decode(i)))));
    assert!(
        results.iter().all(|(_, r)| r.is_err()),
        "every hostile input is an error"
    );
    assert!(
        largest <= longest,
        "decode allocated {largest} bytes for inputs of at most {longest}"
    );
}

#[test]
fn a_valid_max_size_datagram_allocates_at_most_its_size() {
    let pcm = vec![0u8; MAX_DATAGRAM - proto::limits::AUDIO_OVERHEAD];
    let mut buf = bytes::BytesMut::new();
    proto::encode_audio(1, 2, &pcm, &mut buf);
    let (p, largest) = largest_allocation(|| proto::decode(&buf).unwrap());
    assert!(matches!(p.msg, proto::Message::Audio(_)));
    assert!(
        largest <= buf.len(),
        "allocated {largest} for a {}-byte datagram",
        buf.len()
    );
}

#[test]
fn rejecting_common_garbage_allocates_nothing() {
    // What a flood is made of: truncated audio, lying length prefixes, foreign and oversized
    // datagrams. The server rejects each on its receive path; none may touch the heap.
    let mut truncated = header(6);
    truncated.extend_from_slice(&0u64.to_le_bytes());
    truncated.extend_from_slice(&100u64.to_le_bytes());
    truncated.extend_from_slice(&[0; 10]);
    let mut lying = header(6);
    lying.extend_from_slice(&0u64.to_le_bytes());
    lying.extend_from_slice(&u64::MAX.to_le_bytes());
    let foreign = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let oversized = vec![0x45u8; MAX_DATAGRAM + 1];
    let inputs = [truncated, lying, foreign, oversized, header(200), header(4)];
    COUNT.with(|c| c.set(0));
    MEASURING.with(|m| m.set(true));
    let rejected = inputs.iter().filter(|i| proto::decode(i).is_err()).count();
    MEASURING.with(|m| m.set(false));
    assert_eq!(rejected, inputs.len());
    assert_eq!(COUNT.with(Cell::get), 0, "rejecting garbage allocated");
}
