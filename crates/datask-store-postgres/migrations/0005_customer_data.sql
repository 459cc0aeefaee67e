-- Customer data beyond profiles: devices, lists and their members,
-- campaigns, message sends; and saved segments (not an index: edited at
-- /segments, never imported). Text sorts by bytes as in 0004.

CREATE TABLE idx_devices (
    tenant_id    BIGINT NOT NULL,
    device_id    TEXT COLLATE "C" NOT NULL,
    user_id      TEXT COLLATE "C",
    platform     TEXT COLLATE "C",
    token        TEXT COLLATE "C",
    push_enabled BOOLEAN,
    last_seen_at TIMESTAMPTZ,
    created_at   TIMESTAMPTZ,
    _import_run  BIGINT,
    PRIMARY KEY (tenant_id, device_id)
);
CREATE INDEX idx_devices_user ON idx_devices (tenant_id, user_id);

CREATE TABLE idx_lists (
    tenant_id   BIGINT NOT NULL,
    list_id     TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C",
    created_at  TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, list_id)
);

CREATE TABLE idx_list_members (
    tenant_id   BIGINT NOT NULL,
    list_id     TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C" NOT NULL,
    added_at    TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, list_id, user_id)
);
CREATE INDEX idx_list_members_user ON idx_list_members (tenant_id, user_id);

CREATE TABLE idx_campaigns (
    tenant_id   BIGINT NOT NULL,
    campaign_id TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C",
    channel     TEXT COLLATE "C",
    segment_id  BIGINT,
    segment     JSONB,
    status      TEXT COLLATE "C",
    created_at  TIMESTAMPTZ,
    sent_at     TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, campaign_id)
);

CREATE TABLE idx_sends (
    tenant_id    BIGINT NOT NULL,
    send_id      TEXT COLLATE "C" NOT NULL,
    campaign_id  TEXT COLLATE "C",
    user_id      TEXT COLLATE "C",
    device_id    TEXT COLLATE "C",
    channel      TEXT COLLATE "C",
    status       TEXT COLLATE "C",
    sent_at      TIMESTAMPTZ,
    delivered_at TIMESTAMPTZ,
    opened_at    TIMESTAMPTZ,
    clicked_at   TIMESTAMPTZ,
    _import_run  BIGINT,
    PRIMARY KEY (tenant_id, send_id)
);
CREATE INDEX idx_sends_campaign ON idx_sends (tenant_id, campaign_id, sent_at);
CREATE INDEX idx_sends_user ON idx_sends (tenant_id, user_id);

CREATE TABLE segments (
    id         BIGSERIAL PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    filter     JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX segments_tenant ON segments (tenant_id, id);
