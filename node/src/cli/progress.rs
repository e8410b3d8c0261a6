//! Progress bars on stderr for long operations, shown only when the command
//! runs in-process and stderr is a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};

/// A byte-counting bar (`total` known) or spinner (`total` unknown).
pub fn bar(enabled: bool, total: Option<u64>, what: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}")
                .expect("static template"),
        ),
    };
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Counts bytes read into a bar.
pub struct ReadProgress<R> {
    pub inner: R,
    pub bar: ProgressBar,
}

impl<R: Read> Read for ReadProgress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Counts bytes written into a bar.
pub struct WriteProgress<W> {
    pub inner: W,
    pub bar: ProgressBar,
}

impl<W: Write> Write for WriteProgress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
