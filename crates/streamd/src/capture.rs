//! `--capture [DEVICE]`: a live input recorded from a sound card through cpal.
//!
//! The device's real-time callback only converts samples and pushes them into a lock-free
//! ring (rtrb): no lock, allocation, log or blocking there; what does not fit is counted and
//! dropped. A forwarding thread owns the cpal stream, moves the ring's samples into the live
//! queue ([`crate::live::LiveFeed::push_dropping`]: a sound card cannot wait, so an overrun
//! drops the oldest frames, counted) and ends when the stream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use crate::live::{self, LiveFeed, LiveSource, OnIdle};
use crate::source::SourceInfo;

/// How often the forwarding thread moves samples from the device's ring to the live queue:
/// far below the queue's depth ([`live::LIVE_BUFFER`]).
pub const FORWARD_PERIOD: Duration = Duration::from_millis(5);

/// Why capture cannot start; the message names the device.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No such input device (or no default one).
    #[error("capture device {name}: not found (available: {available})")]
    NotFound {
        /// The name asked for, or "default".
        name: String,
        /// Input devices the host lists.
        available: String,
    },
    /// The device exists but cannot record.
    #[error("capture device {name}: {detail}")]
    Device {
        /// The device.
        name: String,
        /// What cpal said.
        detail: String,
    },
}

/// Runs `f` with alsa-lib's error output captured (logged at debug) instead of on stderr:
/// probing devices makes it print lines about cards that do not exist.
fn quiet_alsa<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_os = "linux")]
    let captured = alsa::Output::local_error_handler().ok();
    let r = f();
    #[cfg(target_os = "linux")]
    if let Some(out) = captured {
        let text = out.borrow().to_string();
        if !text.trim().is_empty() {
            tracing::debug!("alsa-lib: {}", text.trim_end());
        }
    }
    r
}

fn device_name(d: &cpal::Device) -> String {
    d.description()
        .map(|x| x.name().to_owned())
        .or_else(|_| d.id().map(|i| i.to_string()))
        .unwrap_or_else(|_| "?".to_owned())
}

fn find_device(name: Option<&str>) -> Result<cpal::Device, CaptureError> {
    let host = cpal::default_host();
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map(|d| d.collect())
        .unwrap_or_default();
    let available = || {
        devices
            .iter()
            .filter_map(|d| d.id().ok().map(|i| i.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        None => host
            .default_input_device()
            .ok_or_else(|| CaptureError::NotFound {
                name: "default".into(),
                available: available(),
            }),
        Some(want) => devices
            .iter()
            .find(|d| {
                let id = d.id().map(|i| i.to_string()).unwrap_or_default();
                device_name(d) == want
                    || id == want
                    || id.split_once(':').is_some_and(|(_, rest)| rest == want)
            })
            .cloned()
            .ok_or_else(|| CaptureError::NotFound {
                name: want.into(),
                available: available(),
            }),
    }
}

/// Opens the input device (the default, or `name`) at its default configuration and starts
/// recording; returns the live source the endpoint reads.
pub fn open(name: Option<&str>, on_idle: OnIdle) -> Result<LiveSource, CaptureError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<LiveSource, CaptureError>>(1);
    let want = name.map(str::to_owned);
    let spawned = std::thread::Builder::new()
        .name("streamd-capture".into())
        .spawn(move || run(want.as_deref(), on_idle, &tx));
    let dev = name.unwrap_or("default").to_owned();
    spawned.map_err(|e| CaptureError::Device {
        name: dev.clone(),
        detail: e.to_string(),
    })?;
    rx.recv().unwrap_or_else(|_| {
        Err(CaptureError::Device {
            name: dev,
            detail: "the capture thread ended".into(),
        })
    })
}

/// The capture thread: opens the device, reports the source (or the error) on `tx`, then
/// forwards samples until the source is gone.
fn run(
    name: Option<&str>,
    on_idle: OnIdle,
    tx: &std::sync::mpsc::SyncSender<Result<LiveSource, CaptureError>>,
) {
    let opened = quiet_alsa(|| {
        let device = find_device(name)?;
        let dev = device_name(&device);
        let err = |e: &dyn std::fmt::Display| CaptureError::Device {
            name: dev.clone(),
            detail: e.to_string(),
        };
        let supported = device.default_input_config().map_err(|e| err(&e))?;
        let config: cpal::StreamConfig = supported.config();
        let rate = config.sample_rate;
        let channels = config.channels;
        let ch = usize::from(channels.max(1));
        let cap = live::buffer_frames(rate) * ch;
        let (producer, consumer) = rtrb::RingBuffer::<i16>::new(cap);
        let dropped = Arc::new(AtomicU64::new(0));
        let stream = match supported.sample_format() {
            cpal::SampleFormat::I16 => {
                build::<i16>(&device, config, producer, dropped.clone(), |s| s)
            }
            cpal::SampleFormat::F32 => {
                build::<f32>(&device, config, producer, dropped.clone(), |s| {
                    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
                })
            }
            other => return Err(err(&format!("unsupported sample format {other}"))),
        }
        .map_err(|e| err(&e))?;
        stream.play().map_err(|e| err(&e))?;
        let info = SourceInfo {
            sample_rate: rate,
            channels,
            total_frames: None,
            codec: "capture".into(),
            title: dev.clone(),
        };
        let (feed, source) = live::channel(info, live::buffer_frames(rate), on_idle);
        Ok((stream, consumer, feed, source, dropped, ch))
    });
    let (stream, mut consumer, feed, source, dropped, ch) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    if tx.send(Ok(source)).is_err() {
        return;
    }
    forward(&mut consumer, &feed, ch);
    drop(stream);
    let lost = dropped.load(Ordering::Relaxed);
    if lost > 0 {
        tracing::debug!("capture: {lost} samples dropped in the device ring");
    }
}

fn forward(consumer: &mut rtrb::Consumer<i16>, feed: &LiveFeed, ch: usize) {
    let mut buf: Vec<i16> = Vec::with_capacity(consumer.buffer().capacity());
    while !feed.is_closed() {
        let n = consumer.slots();
        let n = n - n % ch;
        if n > 0
            && let Ok(chunk) = consumer.read_chunk(n)
        {
            buf.clear();
            let (a, b) = chunk.as_slices();
            buf.extend_from_slice(a);
            buf.extend_from_slice(b);
            chunk.commit_all();
            feed.push_dropping(&buf);
        }
        std::thread::sleep(FORWARD_PERIOD);
    }
}

fn build<T: cpal::SizedSample + Copy + Send + 'static>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut producer: rtrb::Producer<i16>,
    dropped: Arc<AtomicU64>,
    convert: fn(T) -> i16,
) -> Result<cpal::Stream, cpal::Error> {
    device.build_input_stream::<T, _, _>(
        config,
        // Real-time: convert and push what fits, count the rest. No locks, allocation, logging
        // or blocking.
        move |data: &[T], _| {
            let n = producer.slots().min(data.len());
            if let Ok(mut chunk) = producer.write_chunk(n) {
                let (a, b) = chunk.as_mut_slices();
                for (d, &s) in a.iter_mut().chain(b.iter_mut()).zip(data) {
                    *d = convert(s);
                }
                chunk.commit_all();
            }
            if n < data.len() {
                dropped.fetch_add((data.len() - n) as u64, Ordering::Relaxed);
            }
        },
        |_err| {},
        None,
    )
}
