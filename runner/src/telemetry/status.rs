//! The live status line of `floe run` on an interactive terminal: one line at the
//! bottom of the terminal, redrawn every second, with the rate, the consumer's lag, the
//! rows loaded, the dead letters and any breaker that is not closed:
//!
//! ```text
//! floe │ 120,431 events · 2,130/s │ lag 1,204 │ 98,112 rows loaded │ 3 dead letters │ warehouse breaker open
//! ```
//!
//! Log lines go through [`StatusLine::writer`], which takes the status line away while a
//! log line is written and draws it again below it, so the two never mix. Off when
//! stderr is not a terminal and with `--log-format json`.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use floe_batch::events::{Stats, StatsSnapshot};

/// Erase the terminal's current line and go back to its start.
const CLEAR: &[u8] = b"\r\x1b[2K";

/// Where the status line and the logs are written, and the line now shown.
struct Screen {
    out: Box<dyn Write + Send>,
    /// The status line as drawn (empty: none shown).
    line: String,
}

impl Screen {
    fn lock(screen: &Mutex<Screen>) -> MutexGuard<'_, Screen> {
        screen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn draw(&mut self) {
        if !self.line.is_empty() {
            let _ = self.out.write_all(self.line.as_bytes());
            let _ = self.out.flush();
        }
    }
}

/// The status line (cheap to clone: one screen).
#[derive(Clone)]
pub struct StatusLine {
    screen: Arc<Mutex<Screen>>,
}

impl StatusLine {
    /// On stderr, when it is a terminal and logs are text; `None` otherwise.
    pub fn stderr(json_logs: bool) -> Option<StatusLine> {
        use std::io::IsTerminal as _;
        (!json_logs && std::io::stderr().is_terminal())
            .then(|| StatusLine::to(Box::new(std::io::stderr())))
    }

    /// On `out` (whatever it is).
    pub fn to(out: Box<dyn Write + Send>) -> StatusLine {
        StatusLine {
            screen: Arc::new(Mutex::new(Screen {
                out,
                line: String::new(),
            })),
        }
    }

    /// The log writer: each log line is written above the status line.
    pub fn writer(&self) -> LogWriter {
        LogWriter {
            screen: self.screen.clone(),
        }
    }

    /// Shows `line` in place of the previous one.
    pub fn show(&self, line: &str) {
        let mut screen = Screen::lock(&self.screen);
        let _ = screen.out.write_all(CLEAR);
        screen.line = line.to_owned();
        screen.draw();
    }

    /// Takes the status line away (at exit).
    pub fn clear(&self) {
        let mut screen = Screen::lock(&self.screen);
        if !screen.line.is_empty() {
            let _ = screen.out.write_all(CLEAR);
            let _ = screen.out.flush();
            screen.line.clear();
        }
    }

    /// Redraws the line from `stats` every `every` until the task is aborted.
    pub fn spawn(self, stats: Arc<Stats>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut previous: Option<(Instant, u64)> = None;
            loop {
                ticks.tick().await;
                let now = Instant::now();
                let snapshot = stats.snapshot();
                let rate = previous.map(|(at, consumed)| {
                    let secs = now.duration_since(at).as_secs_f64();
                    (snapshot.events_consumed.saturating_sub(consumed)) as f64 / secs.max(1e-3)
                });
                previous = Some((now, snapshot.events_consumed));
                self.show(&render(&snapshot, rate, stats.consumer_lag()));
            }
        })
    }
}

/// The status line's text.
pub fn render(s: &StatsSnapshot, rate: Option<f64>, lag: Option<i64>) -> String {
    let mut line = format!("floe │ {} events", thousands(s.events_consumed));
    if let Some(rate) = rate {
        line.push_str(&format!(" · {}/s", thousands(rate.round() as u64)));
    }
    if let Some(lag) = lag {
        line.push_str(&format!(" │ lag {}", thousands(lag.max(0) as u64)));
    }
    line.push_str(&format!(" │ {} rows loaded", thousands(s.rows_loaded)));
    line.push_str(&format!(" │ {} dead letters", thousands(s.dead_letters)));
    for (breaker, state) in [
        ("warehouse", s.breaker_state),
        ("broker", s.broker_breaker_state),
        ("dead letter queue", s.dlq_breaker_state),
        ("schema registry", s.registry_breaker_state),
    ] {
        if state != "closed" {
            line.push_str(&format!(" │ {breaker} breaker {state}"));
        }
    }
    line
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes log lines above the status line (a `tracing_subscriber` writer).
#[derive(Clone)]
pub struct LogWriter {
    screen: Arc<Mutex<Screen>>,
}

/// One log line being written: the status line is cleared when it is made and drawn
/// again when it is dropped, the screen locked in between.
pub struct LogLine<'a> {
    screen: MutexGuard<'a, Screen>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        let mut screen = Screen::lock(&self.screen);
        if !screen.line.is_empty() {
            let _ = screen.out.write_all(CLEAR);
        }
        LogLine { screen }
    }
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.screen.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.screen.out.flush()
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        self.screen.draw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal that keeps what it was sent.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<u8>>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn the_line_says_rate_lag_rows_dead_letters_and_open_breakers() {
        let stats = Stats::new();
        let mut s = stats.snapshot();
        s.events_consumed = 1_234_567;
        s.rows_loaded = 1_000;
        s.dead_letters = 3;
        assert_eq!(
            render(&s, None, None),
            "floe │ 1,234,567 events │ 1,000 rows loaded │ 3 dead letters"
        );
        s.breaker_state = "open";
        s.dlq_breaker_state = "half-open";
        assert_eq!(
            render(&s, Some(2130.4), Some(12_004)),
            "floe │ 1,234,567 events · 2,130/s │ lag 12,004 │ 1,000 rows loaded │ 3 dead letters \
             │ warehouse breaker open │ dead letter queue breaker half-open"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn log_lines_are_written_above_the_status_line() {
        use tracing_subscriber::fmt::MakeWriter as _;
        let terminal = Recorded::default();
        let status = StatusLine::to(Box::new(terminal.clone()));
        let logs = status.writer();
        // No status yet: a log line is written as it is.
        logs.make_writer().write_all(b"first\n").unwrap();
        status.show("floe │ 10 events");
        logs.make_writer().write_all(b"second\n").unwrap();
        status.show("floe │ 20 events");
        status.clear();
        assert_eq!(
            terminal.text(),
            "first\n\
             \r\x1b[2Kfloe │ 10 events\
             \r\x1b[2Ksecond\nfloe │ 10 events\
             \r\x1b[2Kfloe │ 20 events\
             \r\x1b[2K"
        );
    }
}
