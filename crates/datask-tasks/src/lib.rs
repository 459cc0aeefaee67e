//! One handler per task identifier, registered in one place.

mod audience;
mod export;
mod import;
mod lists;
mod messages;
mod profiles;
mod syncs;
mod target;

use datask_engine::Registry;

pub use audience::{CampaignAudience, SegmentCount, SegmentExport};
pub use export::Export;
pub use import::Import;
pub use lists::ListExport;
pub use messages::{CampaignExport, SendExport};
pub use profiles::{CleanupUsers, PII_FIELDS, ProfileDeletePersonalData, ProfileExportData};
pub use syncs::{Sync, check_endpoint_url, same_origin};

/// Every handler this build of datask runs.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Export)
        .register(Import::index())
        .register(Import::profiles())
        .register(Import::list())
        .register(ListExport)
        .register(CampaignExport)
        .register(SendExport)
        .register(ProfileExportData)
        .register(ProfileDeletePersonalData)
        .register(CleanupUsers)
        .register(SegmentCount)
        .register(SegmentExport::profiles())
        .register(SegmentExport::devices())
        .register(CampaignAudience::count())
        .register(CampaignAudience::preview())
        .register(Sync::active_directory_profiles())
        .register(Sync::active_directory_lists())
        .register(Sync::kochava_installs());
    r
}
