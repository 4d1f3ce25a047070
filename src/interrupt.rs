//! Interruption by signal: SIGINT (Ctrl-C) and SIGTERM (what `timeout`, Slurm and Kubernetes
//! send before killing) ask a long command to stop cleanly — a training run finishes its step and
//! writes a checkpoint — and the process then exits with 128 + the signal number (130, 143). A
//! second signal exits at once, without a checkpoint.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The flag that SIGINT and SIGTERM set (handlers installed on the first call).
pub fn stop_flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        install();
        flag
    })
    .clone()
}

/// The signal that asked the process to stop, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status after an interruption by signal: 128 + its number.
pub fn exit_status() -> Option<u8> {
    received().map(|s| (128 + s).clamp(0, 255) as u8)
}

#[cfg(unix)]
fn install() {
    extern "C" fn handler(signal: libc::c_int) {
        // Only async-signal-safe work here: atomics and write(2).
        if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
            let msg = b"\ninterrupted again: exiting without a checkpoint\n";
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(128 + signal);
            }
        }
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::SeqCst);
        }
        let msg: &[u8] = if signal == libc::SIGTERM {
            b"\nterminated: finishing this step and writing a checkpoint (a second signal aborts)\n"
        } else {
            b"\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)\n"
        };
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler above only touches atomics and calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(not(unix))]
fn install() {
    let _ = ctrlc::set_handler(|| {
        if RECEIVED.swap(2, Ordering::SeqCst) != 0 {
            eprintln!("\ninterrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::SeqCst);
        }
        eprintln!("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)");
    });
}
