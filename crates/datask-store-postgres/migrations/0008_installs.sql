-- Attributed installs, pulled by `kochava_sync_installs`: one per device.
-- Text sorts by bytes as in 0004.

CREATE TABLE idx_installs (
    tenant_id    BIGINT NOT NULL,
    device_id    TEXT COLLATE "C" NOT NULL,
    user_id      TEXT COLLATE "C",
    platform     TEXT COLLATE "C",
    network      TEXT COLLATE "C",
    campaign     TEXT COLLATE "C",
    installed_at TIMESTAMPTZ,
    _import_run  BIGINT,
    PRIMARY KEY (tenant_id, device_id)
);
CREATE INDEX idx_installs_user ON idx_installs (tenant_id, user_id);
