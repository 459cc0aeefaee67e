//! How the process asks the kernel for memory.

/// Turns transparent huge pages off for this process, unless
/// `DATASK_HUGE_PAGES=1`.
///
/// mimalloc advises its arena for huge pages, so the first touch of any
/// part of a 2 MiB range made the whole range resident: peak memory of a
/// 1M-profile upload, import and export was 141–153 MB with them and
/// 105–113 MB without (`datask-bench memory`, same machine, same session),
/// and an import spent a sixth of its time in the kernel zeroing them.
/// Called first thing in `main`; memory touched before that keeps the pages
/// it has.
pub fn without_huge_pages() {
    if std::env::var_os("DATASK_HUGE_PAGES").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only the memory figure depends on it.
        eprintln!("transparent huge pages stay on: {e}");
    }
}
