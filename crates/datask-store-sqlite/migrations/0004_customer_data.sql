-- Customer data beyond profiles: devices, lists and their members,
-- campaigns, message sends; and saved segments (not an index: edited at
-- /segments, never imported).

CREATE TABLE idx_devices (
    tenant_id    INTEGER NOT NULL,
    device_id    TEXT    NOT NULL,
    user_id      TEXT,
    platform     TEXT,
    token        TEXT,
    push_enabled INTEGER,
    last_seen_at INTEGER,
    created_at   INTEGER,
    _import_run  INTEGER,
    PRIMARY KEY (tenant_id, device_id)
);
CREATE INDEX idx_devices_user ON idx_devices (tenant_id, user_id);

CREATE TABLE idx_lists (
    tenant_id   INTEGER NOT NULL,
    list_id     TEXT    NOT NULL,
    name        TEXT,
    created_at  INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, list_id)
);

CREATE TABLE idx_list_members (
    tenant_id   INTEGER NOT NULL,
    list_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    added_at    INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, list_id, user_id)
);
CREATE INDEX idx_list_members_user ON idx_list_members (tenant_id, user_id);

CREATE TABLE idx_campaigns (
    tenant_id   INTEGER NOT NULL,
    campaign_id TEXT    NOT NULL,
    name        TEXT,
    channel     TEXT,
    segment_id  INTEGER,
    segment     TEXT,
    status      TEXT,
    created_at  INTEGER,
    sent_at     INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, campaign_id)
);

CREATE TABLE idx_sends (
    tenant_id    INTEGER NOT NULL,
    send_id      TEXT    NOT NULL,
    campaign_id  TEXT,
    user_id      TEXT,
    device_id    TEXT,
    channel      TEXT,
    status       TEXT,
    sent_at      INTEGER,
    delivered_at INTEGER,
    opened_at    INTEGER,
    clicked_at   INTEGER,
    _import_run  INTEGER,
    PRIMARY KEY (tenant_id, send_id)
);
CREATE INDEX idx_sends_campaign ON idx_sends (tenant_id, campaign_id, sent_at);
CREATE INDEX idx_sends_user ON idx_sends (tenant_id, user_id);

CREATE TABLE segments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
    name       TEXT    NOT NULL,
    filter     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX segments_tenant ON segments (tenant_id, id);
