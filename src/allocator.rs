//! How the `ringlog` binary's allocator, mimalloc, treats memory it frees.
//!
//! The binary allocates with mimalloc (`src/main.rs`); the library and its tests keep
//! the system allocator, so nothing here changes how they allocate.
//!
//! By default mimalloc gives pages it no longer uses back to the kernel. A node
//! churns through its memory at the rate records arrive: a follower's receive buffers
//! stay pinned by the entries of the log cache until eviction frees them, and the
//! next buffers are then new allocations. Pages given back are faulted in and zeroed
//! by the kernel again on their next use: about 1,600 page faults per second on each
//! node of the pipelined benchmark, up to a tenth of a follower's shard thread in
//! profiles (docs/performance.md, "Ninth look"). Kept, they are reused as they are.
//!
//! The cost is that a node's resident memory stays at its peak: it no longer shrinks
//! after a burst. The peak is bounded like everything else (the log cache, the WAL's
//! buffers, the frame and queue limits), so this trades no bound away; an operator who
//! wants the memory back sets `MIMALLOC_PURGE_DELAY` (in milliseconds, mimalloc's
//! own variable), which this leaves alone.

use std::ffi::{c_int, c_long};

// Links mimalloc's C library, whose option functions are declared below, into every
// binary of this crate, tests included.
extern crate mimalloc as _;

/// `mi_option_purge_delay`'s position in `mi_option_t` (mimalloc 3's
/// `include/mimalloc.h`): the `mimalloc` crate does not name it. A test checks by
/// name that this is the option set.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// mimalloc's "never purge" value of `purge_delay`.
const PURGE_NEVER: c_long = -1;

/// The environment variable through which mimalloc reads `purge_delay`.
const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

unsafe extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Keeps the pages mimalloc frees instead of giving them back to the kernel, unless
/// the environment sets `MIMALLOC_PURGE_DELAY`. Call at the start of `main`, before
/// the threads that allocate most are started.
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_VAR).is_none() {
        // SAFETY: mimalloc's option setter takes any option and value and may be
        // called at any time, from any thread.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_NEVER) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CStr, c_char, c_void};

    unsafe extern "C" {
        fn mi_options_print_out(
            out: unsafe extern "C" fn(msg: *const c_char, arg: *mut c_void),
            arg: *mut c_void,
        );
    }

    /// Appends one line of mimalloc's output to the `String` that `arg` points to.
    unsafe extern "C" fn collect(msg: *const c_char, arg: *mut c_void) {
        // SAFETY: mimalloc passes a NUL-terminated message and the `arg` given to
        // `mi_options_print_out`, a live `&mut String`.
        let (msg, out) = unsafe { (CStr::from_ptr(msg), &mut *(arg as *mut String)) };
        out.push_str(&msg.to_string_lossy());
    }

    /// mimalloc's own listing of its options, one `option 'name': value` per line.
    fn options_listing() -> String {
        let mut out = String::new();
        // SAFETY: `collect` only writes to `out`, which outlives the call.
        unsafe { mi_options_print_out(collect, &mut out as *mut String as *mut c_void) };
        out
    }

    /// The option set is the one mimalloc calls `purge_delay`, by its own listing,
    /// and it ends up at "never" (when the environment does not choose).
    #[test]
    fn freed_memory_is_kept_by_setting_purge_delay_by_name() {
        if std::env::var_os(PURGE_DELAY_VAR).is_some() {
            eprintln!("{PURGE_DELAY_VAR} is set in the environment: nothing to check");
            return;
        }
        keep_freed_memory();
        let listing = options_listing();
        let line = listing
            .lines()
            .find(|l| l.starts_with("option 'purge_delay':"))
            .unwrap_or_else(|| panic!("no purge_delay in mimalloc's options:\n{listing}"));
        assert_eq!(line.split(':').nth(1).map(str::trim), Some("-1"), "{line}");
    }
}
