//! Named fault points for the fault-injection harness (feature `failpoints`).
//!
//! [`point`] marks a step of the data path where a crash or a stall must lose nothing: after
//! the API commits a request, after the scheduler writes a batch file, after the worker
//! broadcasts a transaction, and so on. Without the feature it compiles to nothing. With it,
//! the `fail` crate decides what happens there, from the `FAILPOINTS` environment variable
//! the process starts with (`name=action;name=action`), e.g.
//!
//! ```text
//! FAILPOINTS='worker::after_broadcast=1*return(kill)' cas worker
//! ```
//!
//! `return(kill)` kills the process with SIGKILL on the spot (no destructor, no flush, as a
//! power loss or the OOM killer would), `return(exit)` exits with status 1, and the `fail`
//! crate's own actions (`sleep(ms)`, `pause`, `panic`, counts such as `1*`, probabilities
//! such as `20%`) work as documented there. Production builds leave the feature off.
//!
//! The names in use are listed in [`POINTS`].

/// Every fault point of the data path, in the order a request meets them.
pub const POINTS: [&str; 12] = [
    "api::after_commit",
    "scheduler::after_replaced",
    "scheduler::after_batch_file",
    "scheduler::after_batch_record",
    "scheduler::after_announce",
    "scheduler::before_ack",
    "worker::after_signing",
    "worker::after_broadcast",
    "worker::after_mined",
    "worker::after_artifact",
    "worker::before_mark_anchored",
    "worker::after_mark_anchored",
];

/// A fault point; see the [module docs](self).
#[inline]
pub fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    if let Some(action) = fail::eval(name, |arg| arg.unwrap_or_default()) {
        debug_assert!(POINTS.contains(&name), "unlisted fault point {name}");
        match action.as_str() {
            // SAFETY: sending a signal to this very process.
            "kill" => unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            },
            "exit" => std::process::exit(1),
            other => panic!("fault point {name}: unknown action return({other})"),
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
