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
//! Programs played through it must see [`Pulse::env`]; [`Pulse::command`] sets it. (Setting the
//! variables in the test process itself would need `unsafe` `set_var`, so play from a child.)

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

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
    /// Sink rate, frames per second.
    rate: u32,
    /// Sink channels.
    channels: u16,
}

impl Pulse {
    /// Starts the reader, then the daemon with a `rate`/`channels` s16le pipe sink, and waits
    /// until the daemon accepts connections.
    pub fn start(rate: u32, channels: u16) -> io::Result<Pulse> {
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
        pulse.reader = Some(
            Command::new("cat")
                .arg(&fifo)
                .stdin(Stdio::null())
                .stdout(File::create(pulse.capture_path())?)
                .spawn()?,
        );
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
