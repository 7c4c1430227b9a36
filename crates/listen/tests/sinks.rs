//! The sinks' clocks and files, without a network: the virtual device's real-time demand, the
//! WAV sink's file, and the one-line error when there is no such device.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use listen::sink::{NullSink, Sink, VIRTUAL_LEAD, VIRTUAL_REFILL_MARGIN, VirtualDevice, WavSink};

mod common;

#[test]
fn virtual_device_consumes_in_real_time() {
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let mut d = VirtualDevice::new(1000, Duration::from_millis(20));
    assert_eq!(d.demand(ms(0)), 20);
    d.wrote(ms(0), 20);
    assert_eq!(d.demand(ms(0)), 0);
    assert_eq!(d.demand(ms(5)), 5);
    assert_eq!(d.queued(ms(15)), 5);
    d.wrote(ms(15), 10);
    assert_eq!(d.queued(ms(15)), 15);
    assert_eq!(d.remaining(ms(15)), Duration::from_millis(15));
    // Starved: the clock does not bank time while empty.
    assert_eq!(d.demand(ms(100)), 20);
    d.wrote(ms(100), 3);
    assert_eq!(d.queued(ms(101)), 2);
}

#[test]
fn virtual_device_asks_for_a_refill_when_down_to_its_margin() {
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let mut d = VirtualDevice::new(1000, Duration::from_millis(20));
    // Nothing written yet: at once.
    assert_eq!(d.refill_at(ms(0)), ms(0));
    d.wrote(ms(0), 20);
    let at = d.refill_at(ms(0));
    assert_eq!(at, ms(20) - VIRTUAL_REFILL_MARGIN);
    assert!(at > ms(0));
    // Then it holds the margin, and has room for the rest.
    assert_eq!(Duration::from_millis(d.queued(at)), VIRTUAL_REFILL_MARGIN);
    assert_eq!(d.demand(at) as u64, 20 - d.queued(at));
    // Already below the margin (a late refill): at once.
    assert_eq!(d.refill_at(ms(18)), ms(18));
    // The sinks ask the same of their device.
    let mut s = NullSink::new(1000, 1);
    s.write(ms(0), &[0; 20]).unwrap();
    assert_eq!(s.refill_at(ms(0)), at);
}

#[test]
fn null_sink_takes_its_lead_then_the_clock_rate() {
    let t0 = Instant::now();
    let mut s = NullSink::new(48_000, 2);
    assert_eq!(s.lead(), VIRTUAL_LEAD);
    let n = s.demand(t0);
    assert_eq!(n, 960);
    s.write(t0, &vec![0; n * 2]).unwrap();
    assert_eq!(s.demand(t0 + Duration::from_millis(10)), 480);
    assert_eq!(s.finish(t0).unwrap(), Duration::from_millis(20));
}

#[test]
fn wav_sink_writes_16_bit_at_the_stream_format() {
    let tmp = common::Tmp::new();
    let p = tmp.path("sink.wav");
    let t0 = Instant::now();
    let mut s = WavSink::create(&p, 22_050, 3).unwrap();
    let samples: Vec<i16> = (0..300).map(|i| (i * 97 % 65536 - 32768) as i16).collect();
    s.write(t0, &samples[..150]).unwrap();
    s.write(t0, &samples[150..]).unwrap();
    s.finish(t0).unwrap();
    let (spec, got) = common::read_wav(&p);
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (22_050, 3, 16)
    );
    assert_eq!(got, samples);
}

#[test]
fn wav_sink_reports_an_unwritable_path() {
    let e = WavSink::create(std::path::Path::new("/nonexistent-dir/x.wav"), 8000, 1).unwrap_err();
    assert!(e.to_string().contains("/nonexistent-dir/x.wav"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_device_is_one_line_exit_1_before_contacting_the_server() {
    let srv = common::Streamd::start(common::Script::clean(9600)).await;
    let mut c = listen::Config::new(srv.addr.to_string());
    c.device = Some("no-such-device-on-any-host".into());
    let e = listen::run(c, std::future::pending()).await.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains("--output"), "{msg}");
    assert!(
        srv.log.lock().unwrap().connects.is_empty(),
        "contacted the server anyway"
    );
}
