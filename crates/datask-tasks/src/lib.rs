//! One handler per task identifier, registered in one place.

mod export;
mod import;
mod target;

use datask_engine::Registry;

pub use export::Export;
pub use import::Import;

/// Every handler this build of datask runs.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Export)
        .register(Import::index())
        .register(Import::profiles());
    r
}
