//! Keeping member lists in sync: the state machine of one upstream
//! ([`machine`]), and the poller that drives every upstream on one timer
//! table, elects who polls, fails over between registry addresses and is
//! the sole writer of snapshots and status ([`poller`]).

pub mod discovery;
pub mod machine;
pub mod poller;
pub mod timers;
pub mod watch;
