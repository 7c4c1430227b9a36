//! The fan-out allocates nothing per tick: after the first send (which sizes the reused address
//! array and this thread's kernel header array), ticks to 500 listeners on every path make no
//! heap allocation at all. A counting global allocator proves it.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use streamd::fanout::{Fanout, SendPath};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only allocations on the measuring thread count: the test harness allocates on others.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn record() {
    if MEASURING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Heap allocations (and reallocations) `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCS.store(0, Ordering::SeqCst);
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (out, ALLOCS.load(Ordering::SeqCst))
}

// SAFETY: forwards every call unchanged to the system allocator; only counts them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn ticks_to_500_listeners_allocate_nothing_on_any_path() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let tx = tokio::net::UdpSocket::from_std({
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    })
    .unwrap();
    let rx: Vec<std::net::UdpSocket> = (0..500)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let dests: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr().unwrap()).collect();
    let tick = [
        Bytes::from(vec![1u8; 1388]),
        Bytes::from(vec![2u8; 1388]),
        Bytes::from(vec![3u8; 812]),
    ];
    for path in [SendPath::Gso, SendPath::Sendmmsg, SendPath::PerDatagram] {
        let mut f = Fanout::with_path(path);
        // The first tick may size the buffers.
        f.send(&tx, &tick, &dests);
        let ((), n) = allocations(|| {
            for _ in 0..10 {
                f.send(&tx, &tick, &dests);
            }
        });
        assert_eq!(
            n, 0,
            "{path:?}: {n} allocations in 10 ticks to 500 listeners"
        );
        assert_eq!(f.stats().datagrams + f.stats().dropped(), 11 * 3 * 500);
        // Let the receivers' queues drain between paths (they are never read).
        drop(f);
    }
}
