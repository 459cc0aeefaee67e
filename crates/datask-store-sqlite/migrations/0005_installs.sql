-- Attributed installs, pulled by `kochava_sync_installs`: one per device.

CREATE TABLE idx_installs (
    tenant_id    INTEGER NOT NULL,
    device_id    TEXT    NOT NULL,
    user_id      TEXT,
    platform     TEXT,
    network      TEXT,
    campaign     TEXT,
    installed_at INTEGER,
    _import_run  INTEGER,
    PRIMARY KEY (tenant_id, device_id)
);
CREATE INDEX idx_installs_user ON idx_installs (tenant_id, user_id);
