//! mimalloc keeps freed pages while a training runs. By default it hands memory back to the
//! OS 10 ms after it is freed; a training step frees and reallocates the same large
//! activation buffers every step, so each step faulted them in again and the kernel zeroed
//! every page: a third of a MiniLM step was `clear_page` (2.64 s a step against 2.15 s with
//! purging off, peak RSS 6.1 against 6.5 GB). The purge delay is a run-time option, so it is
//! turned off for the length of a training and restored after, and long-lived processes
//! (`tamp serve`, workers) still give memory back between jobs. Harmless where mimalloc is
//! linked but not the global allocator (test binaries).

// The workspace denies `unsafe`; calling mimalloc's C option API is unsafe by nature.
#![allow(unsafe_code)]

use std::sync::Mutex;

/// `mi_option_purge_delay` in mimalloc.h (v3, the version libmimalloc-sys 0.1.49 builds);
/// that crate does not name it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Trainings running now, and the purge delay to restore when the last one ends.
static ACTIVE: Mutex<(usize, std::os::raw::c_long)> = Mutex::new((0, 0));

/// Held for the length of a training; dropping the last one restores the purge delay.
pub struct KeepPages;

pub fn keep_freed_pages() -> KeepPages {
    let mut a = ACTIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if a.0 == 0 {
        // SAFETY: reading and setting an option takes no pointers and is thread-safe in
        // mimalloc; the option index is a valid `mi_option_t`.
        a.1 = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
    a.0 += 1;
    KeepPages
}

impl Drop for KeepPages {
    fn drop(&mut self) {
        let mut a = ACTIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        a.0 -= 1;
        if a.0 == 0 {
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, a.1) };
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option is off while a training holds it and restored after the last one ends.
    #[test]
    fn the_purge_delay_is_off_while_training_and_restored_after() {
        // SAFETY: see `keep_freed_pages`.
        let before = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        let (a, b) = (super::keep_freed_pages(), super::keep_freed_pages());
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) }, -1);
        drop(a);
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) }, -1);
        drop(b);
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) }, before);
    }
}
