//! The `--log-file` writer of `streamd` and `listen`: log lines are appended to a file that
//! SIGHUP reopens, so after logrotate has moved the file away the next lines go to a new file
//! of the same name. It plugs into `tracing_subscriber::fmt` as a `MakeWriter`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The `--log-file` writer: SIGHUP reopens the path (after logrotate moved the file away, the
/// next lines go to a new file of the same name).
#[derive(Clone)]
pub struct LogFile {
    /// The path as given, reopened on SIGHUP.
    path: PathBuf,
    /// The file written now; swapped for a fresh one on reopen.
    file: Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Opens (creates or appends to) `path`; the error is one line naming the file.
    pub fn new(path: &Path) -> Result<LogFile, String> {
        let f = Self::open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        Ok(LogFile {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(f)),
        })
    }

    /// Opens the path again and writes there from now on; on failure keeps the old file.
    pub fn reopen(&self) {
        match Self::open(&self.path) {
            Ok(f) => {
                if let Ok(mut g) = self.file.lock() {
                    *g = f;
                }
                tracing::info!("reopened log file {}", self.path.display());
            }
            Err(e) => tracing::warn!("cannot reopen log file {}: {e}", self.path.display()),
        }
    }

    /// Reopens the file on every SIGHUP, for the life of the tokio runtime it is called in.
    pub fn reopen_on_sighup(self) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            self.reopen();
                        }
                    });
                }
                Err(e) => tracing::warn!("no SIGHUP handler ({e}): the log file is not reopened"),
            }
        }
    }
}

/// One log event's access to the current log file.
pub struct LogFileWriter(Arc<Mutex<std::fs::File>>);

impl std::io::Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut f) => f.write(buf),
            Err(_) => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut f) => f.flush(),
            Err(_) => Ok(()),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LogFileWriter;
    fn make_writer(&'a self) -> LogFileWriter {
        LogFileWriter(self.file.clone())
    }
}
