//! A `log` backend over `proxy_log` that never panics (the SDK's own
//! logger unwraps the host call), plus a panic hook that logs the panic.

use super::abi;
use proxy_wasm::types::LogLevel;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        let _ = abi::log(LogLevel::Critical, &format!("panic: {info}"));
    }));
}

pub fn set_level(level: crate::sansio::config::LogLevel) {
    use crate::sansio::config::LogLevel as L;
    log::set_max_level(match level {
        L::Trace => log::LevelFilter::Trace,
        L::Debug => log::LevelFilter::Debug,
        L::Info => log::LevelFilter::Info,
        L::Warn => log::LevelFilter::Warn,
        L::Error => log::LevelFilter::Error,
    });
}
