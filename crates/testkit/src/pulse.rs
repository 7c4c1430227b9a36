//! A private, headless PulseAudio whose only sink writes raw s16le samples to a file, so tests
//! can play through a real audio path (cpal → ALSA → PulseAudio, or `pacat`) on a machine
//! without a sound card and compare what came out, sample for sample, in real time.
//!
//! How it runs: a temp dir for `XDG_RUNTIME_DIR` and `HOME`, the FIFO's
//! reader started before the daemon (without one the sink drops audio), the daemon in the
//! foreground (`--daemonize=no`) so its PID is ours, and a wait until its socket accepts
//! connections. The sink runs at the given rate and channel count so nothing is resampled.
//! The guard kills exactly the two processes it started, on drop or in
//! [`Pulse::stop_and_read`].
//!
//! The pipe sink writes silence while nothing plays, so a capture is: silence, what was played,
//! silence. [`trim_silence`] cuts the zeros off both ends.
//!
//! When the audio came out matters too ([`Pulse::start_timed`]): the FIFO is then read by a
//! thread of this process that notes `CLOCK_REALTIME` after every read. The pipe sink (with
//! `use_system_clock_for_timing`) keeps a clock of its own: frame `n` of its output is played at
//! `t0 + n / rate`, and it writes each block of frames into the FIFO when that clock reaches
//! the block's first frame, counting the block played over the following block's duration
//! (which is the latency it reports to its clients). [`SinkClock::fit`] finds `t0` from the
//! reads: the earliest any write's first frame came out, relative to its place in the
//! output; every other write came out later by its wake-up latency, which it measures.
//!
//! Programs played through it must see [`Pulse::env`]; [`Pulse::command`] sets it. (Setting the
//! variables in the test process itself would need `unsafe` `set_var`, so play from a child.)

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant, SystemTime};

use crate::install::{is_root, on_path};

/// Name of the capturing sink (also the default, being the only one).
pub const SINK_NAME: &str = "capture";

/// Longest wait for the daemon's socket: a cold start on a loaded 2-core machine took well
/// under a second; ten leave room for worse.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the daemon and the reader to exit after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Programs the harness runs; a test needs all of them.
const PROGRAMS: [&str; 4] = ["pulseaudio", "pacat", "mkfifo", "cat"];

/// Whether a private PulseAudio can run here; the error says why not and what to do, for the
/// test's loud skip message.
pub fn pulse_available() -> Result<(), String> {
    let missing: Vec<&str> = PROGRAMS.into_iter().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let how = "apt-get install -y --no-install-recommends pulseaudio pulseaudio-utils \
               libasound2-plugins";
    Err(if is_root() {
        format!("not installed: {} (run `{how}`)", missing.join(", "))
    } else {
        format!(
            "not installed: {} (and not root, so it cannot be installed here: `sudo {how}`)",
            missing.join(", ")
        )
    })
}

/// Whether ALSA's `default` device will reach a PulseAudio server (the `pulse` plugin of
/// libasound2-plugins): needed by tests that play through cpal rather than `pacat`.
pub fn alsa_pulse_plugin_available() -> Result<(), String> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("alsa-lib/libasound_module_pcm_pulse.so"))
        .chain([PathBuf::from(
            "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so",
        )])
        .any(|p| p.is_file());
    if found {
        Ok(())
    } else {
        Err(
            "ALSA's pulse plugin is missing (install libasound2-plugins), so cpal's default \
             device cannot reach PulseAudio"
                .to_string(),
        )
    }
}

/// A running private PulseAudio with a pipe sink; kills its processes when dropped.
#[derive(Debug)]
pub struct Pulse {
    /// Temp dir holding run/, home/, the FIFO, the capture and the log; removed on drop.
    dir: tempfile::TempDir,
    /// The daemon (foreground, so this is its real PID).
    daemon: Option<Child>,
    /// `cat FIFO`, writing the capture file.
    reader: Option<Child>,
    /// Or the timed reader ([`Pulse::start_timed`]): a thread of this process.
    timed: Option<JoinHandle<io::Result<TimedCapture>>>,
    /// Sink rate, frames per second.
    rate: u32,
    /// Sink channels.
    channels: u16,
}

impl Pulse {
    /// Starts the reader, then the daemon with a `rate`/`channels` s16le pipe sink, and waits
    /// until the daemon accepts connections.
    pub fn start(rate: u32, channels: u16) -> io::Result<Pulse> {
        Self::start_with(rate, channels, false)
    }

    /// Like [`Pulse::start`], with the FIFO read by a thread that notes when each read returned
    /// ([`Pulse::stop_and_read_timed`]), so a test can tell when the sink played what.
    pub fn start_timed(rate: u32, channels: u16) -> io::Result<Pulse> {
        Self::start_with(rate, channels, true)
    }

    fn start_with(rate: u32, channels: u16, timed: bool) -> io::Result<Pulse> {
        pulse_available().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let dir = tempfile::Builder::new()
            .prefix("earshot-pulse-")
            .tempdir()?;
        for sub in ["run", "home"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let mut pulse = Pulse {
            dir,
            daemon: None,
            reader: None,
            timed: None,
            rate,
            channels,
        };
        let fifo = pulse.dir.path().join("out.fifo");
        let st = Command::new("mkfifo").arg(&fifo).status()?;
        if !st.success() {
            return Err(io::Error::other(format!(
                "mkfifo {} failed",
                fifo.display()
            )));
        }
        // The reader first: without one the sink's writes are lost.
        if timed {
            let path = fifo.clone();
            pulse.timed = Some(
                std::thread::Builder::new()
                    .name("pulse-fifo".into())
                    .spawn(move || read_timed(&path))?,
            );
        } else {
            pulse.reader = Some(
                Command::new("cat")
                    .arg(&fifo)
                    .stdin(Stdio::null())
                    .stdout(File::create(pulse.capture_path())?)
                    .spawn()?,
            );
        }
        let sink = format!(
            "module-pipe-sink file={} sink_name={SINK_NAME} format=s16le rate={rate} \
             channels={channels} use_system_clock_for_timing=yes",
            fifo.display()
        );
        let mut cmd = Command::new("pulseaudio");
        cmd.args([
            "--daemonize=no",
            "--exit-idle-time=-1",
            "-n",
            "--use-pid-file=no",
        ])
        .arg(format!("--log-target=file:{}", pulse.log_path().display()))
        .arg("--load=module-native-protocol-unix auth-anonymous=1")
        .arg(format!("--load={sink}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        pulse.configure(&mut cmd);
        pulse.daemon = Some(cmd.spawn()?);
        pulse.wait_ready()?;
        Ok(pulse)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let socket = self.dir.path().join("run/pulse/native");
        let t0 = Instant::now();
        loop {
            if UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            let exited = match self.daemon.as_mut() {
                Some(d) => d.try_wait()?,
                None => None,
            };
            if let Some(st) = exited {
                return Err(io::Error::other(format!(
                    "pulseaudio exited at start ({st}); log: {}",
                    self.log_tail()
                )));
            }
            if t0.elapsed() > READY_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "pulseaudio socket {} not ready after {READY_TIMEOUT:?}; log: {}",
                        socket.display(),
                        self.log_tail()
                    ),
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// The variables a client process needs to reach this daemon (and only this one).
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("XDG_RUNTIME_DIR", self.dir.path().join("run")),
            ("HOME", self.dir.path().join("home")),
        ]
    }

    /// Adds [`Pulse::env`] to `cmd`.
    pub fn configure<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd
    }

    /// A command for `program` that plays into this daemon.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.configure(&mut cmd);
        cmd
    }

    /// The FIFO the sink writes into.
    fn fifo_path(&self) -> PathBuf {
        self.dir.path().join("out.fifo")
    }

    /// Where the sink's raw s16le interleaved samples go.
    pub fn capture_path(&self) -> PathBuf {
        self.dir.path().join("captured.raw")
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pa.log")
    }

    /// The private directory (kept until drop), e.g. for test inputs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of the daemon and the FIFO reader, the only processes this guard will stop.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.daemon.as_ref().map(Child::id),
            self.reader.as_ref().map(Child::id),
        )
    }

    /// The sink's rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The sink's channel count.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Stops the daemon (SIGTERM, so it closes the FIFO cleanly), waits for the reader to see
    /// the end, and returns every captured sample, silence included.
    pub fn stop_and_read(mut self) -> io::Result<Vec<i16>> {
        if let Some(d) = self.daemon.take() {
            terminate(d)?;
        }
        if let Some(r) = self.reader.take() {
            // The reader ends at EOF once the daemon is gone; SIGTERM only if it hangs.
            wait_or_kill(r, STOP_TIMEOUT)?;
        }
        let raw = std::fs::read(self.capture_path())?;
        Ok(raw
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}

impl Pulse {
    /// Stops the daemon (SIGTERM) and returns what the timed reader saw: every sample the sink
    /// wrote, silence included, and when each read returned. Only for [`Pulse::start_timed`].
    pub fn stop_and_read_timed(mut self) -> io::Result<TimedCapture> {
        let Some(reader) = self.timed.take() else {
            return Err(io::Error::other(
                "stop_and_read_timed needs a Pulse::start_timed harness",
            ));
        };
        if let Some(d) = self.daemon.take() {
            terminate(d)?;
        }
        // The daemon is gone, so the reader sees the end of the FIFO; wake it in case the
        // daemon never opened it.
        unblock_reader(&self.fifo_path());
        reader
            .join()
            .map_err(|_| io::Error::other("the FIFO reader panicked"))?
    }
}

/// One read of the FIFO by the timed reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeRead {
    /// `CLOCK_REALTIME` (ns) right after the read returned.
    pub realtime_ns: i128,
    /// Offset of its first byte in the sink's output.
    pub first_byte: u64,
    /// Bytes it returned.
    pub bytes: u64,
}

/// What the timed reader saw.
#[derive(Debug, Clone, Default)]
pub struct TimedCapture {
    /// Every sample the sink wrote (s16le interleaved), silence included, in order.
    pub samples: Vec<i16>,
    /// Every read, in order.
    pub reads: Vec<PipeRead>,
}

fn realtime_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The timed reader: blocks until the daemon opens the FIFO, then reads it to its end.
fn read_timed(fifo: &Path) -> io::Result<TimedCapture> {
    let mut f = File::open(fifo)?;
    // Larger than the pipe, so one read takes whatever the sink has written.
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = Vec::new();
    let mut reads = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        reads.push(PipeRead {
            realtime_ns: realtime_ns(),
            first_byte: bytes.len() as u64,
            bytes: n as u64,
        });
        bytes.extend_from_slice(&buf[..n]);
    }
    let samples = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok(TimedCapture { samples, reads })
}

/// Lets a timed reader still waiting in `open` go on (to the end of the FIFO): a writer that
/// opens and closes at once. Fails harmlessly when no reader is waiting.
fn unblock_reader(fifo: &Path) {
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(fifo);
}

/// Reads closer together than this belong to one write of the sink: the sink writes a block
/// per wake-up, a block lasts milliseconds, and the reader takes a write in one read unless it
/// was already awake.
const SAME_WRITE: Duration = Duration::from_micros(500);

/// The pipe sink's playback clock, found from a [`TimedCapture`]: frame `n` of the sink's
/// output played at `t0_ns + n / frames_per_s` (see the module docs).
///
/// The rate is measured, not assumed: the sink advances its clock by each block's duration
/// in whole microseconds, rounded down (1,024 frames at 44.1 kHz count as 23,219 µs, not
/// 23,219.95), so it consumes frames slightly faster than its nominal rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinkClock {
    /// `CLOCK_REALTIME` (ns) at which the sink played its frame 0.
    pub t0_ns: f64,
    /// Frames the sink played per second of `CLOCK_REALTIME`.
    pub frames_per_s: f64,
    /// The sink's nominal rate.
    pub rate: u32,
    /// Writes seen (reads grouped by [`SAME_WRITE`]).
    pub writes: usize,
    /// Median frames per write: the sink's block, the most its clock runs ahead of playback.
    pub block_frames: u64,
    /// How much later than its clock's instant a write's first frame came out: median, ms.
    pub late_p50_ms: f64,
    /// The same, 99th percentile, ms.
    pub late_p99_ms: f64,
}

impl SinkClock {
    /// Fits the clock to the reads of a sink of nominal `rate` frames per second and
    /// `channels` s16 channels; `None` with fewer than 6 writes. A write's first frame comes
    /// out when the sink's clock reaches it or later (the sink and the reader wake late),
    /// never earlier: the clock is the line under every write, through the earliest write of
    /// the first third and the earliest of the last third.
    pub fn fit(reads: &[PipeRead], rate: u32, channels: u16) -> Option<SinkClock> {
        let frame_bytes = 2 * u64::from(channels.max(1));
        let gap = SAME_WRITE.as_nanos() as i128;
        // (instant the write's first frame came out, that frame, frames in the write)
        let mut writes: Vec<(i128, u64, u64)> = Vec::new();
        for (i, r) in reads.iter().enumerate() {
            let first = i == 0 || r.realtime_ns - reads[i - 1].realtime_ns > gap;
            match writes.last_mut() {
                Some(w) if !first => w.2 += r.bytes / frame_bytes,
                _ => writes.push((
                    r.realtime_ns,
                    r.first_byte / frame_bytes,
                    r.bytes / frame_bytes,
                )),
            }
        }
        // The first write is the sink's start, rendered before its clock ran.
        let steady = writes.get(1..).filter(|w| w.len() >= 5)?;
        let offset = |w: &(i128, u64, u64), fps: f64| w.0 as f64 - w.1 as f64 * 1e9 / fps;
        let third = steady.len() / 3;
        let earliest = |ws: &[(i128, u64, u64)]| {
            ws.iter()
                .copied()
                .min_by(|a, b| offset(a, f64::from(rate)).total_cmp(&offset(b, f64::from(rate))))
        };
        let a = earliest(&steady[..third])?;
        let b = earliest(&steady[steady.len() - third..])?;
        let frames_per_s = if b.0 > a.0 && b.1 > a.1 {
            (b.1 - a.1) as f64 * 1e9 / (b.0 - a.0) as f64
        } else {
            f64::from(rate)
        };
        let offsets: Vec<f64> = steady.iter().map(|w| offset(w, frames_per_s)).collect();
        let t0 = offsets.iter().copied().fold(f64::INFINITY, f64::min);
        let mut late: Vec<f64> = offsets.iter().map(|o| (o - t0) / 1e6).collect();
        late.sort_by(f64::total_cmp);
        let mut blocks: Vec<u64> = steady.iter().map(|w| w.2).collect();
        blocks.sort_unstable();
        let q = |v: &[f64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        Some(SinkClock {
            t0_ns: t0,
            frames_per_s,
            rate,
            writes: steady.len(),
            block_frames: blocks[blocks.len() / 2],
            late_p50_ms: q(&late, 50),
            late_p99_ms: q(&late, 99),
        })
    }

    /// How much faster than its nominal rate the sink played, ppm.
    pub fn rate_error_ppm(&self) -> f64 {
        (self.frames_per_s / f64::from(self.rate) - 1.0) * 1e6
    }

    /// `CLOCK_REALTIME` (ns) at which the sink played frame `n` of its output.
    pub fn played_at(&self, n: u64) -> f64 {
        self.t0_ns + n as f64 * 1e9 / self.frames_per_s
    }
}

/// SIGTERM to exactly this child, then SIGKILL if it outlives [`STOP_TIMEOUT`].
fn terminate(child: Child) -> io::Result<()> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    wait_or_kill(child, STOP_TIMEOUT)
}

fn wait_or_kill(mut child: Child, limit: Duration) -> io::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().map(drop)
}

impl Drop for Pulse {
    fn drop(&mut self) {
        // Exactly our children, by their handles (hence PIDs); reaped so none is left behind.
        for c in [self.daemon.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = self.timed.take() {
            // The daemon is gone: the reader reaches the end of the FIFO (or, if the daemon
            // never opened it, is woken here).
            unblock_reader(&self.fifo_path());
            let _ = t.join();
        }
    }
}

/// The samples between the first and the last non-zero sample, rounded out to whole frames of
/// `channels`: what was played, without the sink's silence around it.
pub fn trim_silence(samples: &[i16], channels: u16) -> &[i16] {
    let ch = usize::from(channels.max(1));
    let Some(first) = samples.iter().position(|&s| s != 0) else {
        return &[];
    };
    let last = samples.iter().rposition(|&s| s != 0).unwrap_or(first);
    let start = first / ch * ch;
    let end = ((last / ch) + 1) * ch;
    &samples[start..end.min(samples.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_whole_frames() {
        assert_eq!(trim_silence(&[0, 0, 0, 5, 6, 0, 0, 0], 2), &[0, 5, 6, 0]);
        assert_eq!(trim_silence(&[0, 0, 0, 0], 2), &[] as &[i16]);
        assert_eq!(trim_silence(&[1, 0, 0, 2], 1), &[1, 0, 0, 2]);
    }

    #[test]
    fn the_sink_clock_is_the_line_under_every_write_and_late_writes_are_measured() {
        // A 1 kHz stereo sink from t = 5 s, 100 ppm fast, blocks of 10 frames: each written
        // when its first frame is due, late by 0.1 ms, one in four by 2 ms; one write read in
        // two parts 0.1 ms apart.
        let t0: i128 = 5_000_000_000;
        let block_ns = 10_000_000.0 / 1.0001;
        let mut reads = Vec::new();
        for k in 0..40u64 {
            let late: i128 = if k % 4 == 3 { 2_000_000 } else { 100_000 };
            let at = t0 + (k as f64 * block_ns).round() as i128 + late;
            let read = |dt: i128, from: u64, bytes: u64| PipeRead {
                realtime_ns: at + dt,
                first_byte: k * 40 + from,
                bytes,
            };
            if k == 9 {
                reads.extend([read(0, 0, 16), read(100_000, 16, 24)]);
            } else {
                reads.push(read(0, 0, 40));
            }
        }
        let c = SinkClock::fit(&reads, 1_000, 2).expect("enough writes");
        assert_eq!(c.writes, 39);
        assert_eq!(c.block_frames, 10);
        assert!((c.rate_error_ppm() - 100.0).abs() < 1.0, "{c:?}");
        assert!((c.t0_ns - (t0 + 100_000) as f64).abs() < 10.0, "{c:?}");
        assert!(c.late_p50_ms.abs() < 1e-4, "{c:?}");
        assert!((c.late_p99_ms - 1.9).abs() < 1e-4, "{c:?}");
        let want = (t0 + 100_000) as f64 + 1e9 / 1.0001;
        assert!((c.played_at(1_000) - want).abs() < 10.0);
        assert_eq!(SinkClock::fit(&reads[..5], 1_000, 2), None);
    }

    #[test]
    fn plugin_check_explains_itself() {
        if let Err(e) = alsa_pulse_plugin_available() {
            assert!(e.contains("libasound2-plugins"));
        }
    }

    #[test]
    fn availability_is_explained() {
        match pulse_available() {
            Ok(()) => assert!(on_path("pulseaudio")),
            Err(e) => assert!(e.contains("not installed")),
        }
    }
}
