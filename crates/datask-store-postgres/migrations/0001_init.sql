-- Task bookkeeping times are BIGINT microseconds since the Unix epoch (UTC),
-- as in the SQLite store; data-index times are TIMESTAMPTZ.

CREATE TABLE tenants (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT        NOT NULL,
    timezone    TEXT        NOT NULL,
    concurrency BIGINT      NOT NULL,
    created_at  BIGINT      NOT NULL
);

-- Only the SHA-256 of a secret is kept.
CREATE TABLE credentials (
    secret_sha256 TEXT   PRIMARY KEY,
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind          TEXT   NOT NULL
);

-- Fences come from one service-wide sequence.
CREATE SEQUENCE task_fence_seq;

CREATE TABLE tasks (
    id               BIGSERIAL PRIMARY KEY,
    tenant_id        BIGINT  NOT NULL REFERENCES tenants (id),
    identifier       TEXT    NOT NULL,
    "desc"           TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    trigger          JSONB   NOT NULL,
    target           JSONB   NOT NULL,
    logs             JSONB   NOT NULL DEFAULT '[]',
    errors           JSONB   NOT NULL DEFAULT '{}',
    progress_done    BIGINT  NOT NULL DEFAULT 0,
    progress_total   BIGINT,
    output           JSONB,
    result           TEXT,
    version          BIGINT  NOT NULL DEFAULT 1,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    debug            TEXT    NOT NULL DEFAULT '',
    priority         BIGINT  NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT  NOT NULL,
    modified_at      BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    run_at           BIGINT  NOT NULL,
    schedule_anchor  BIGINT,
    checkpoint       JSONB,
    fence            BIGINT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    idempotency_key  TEXT
);

-- Partial indexes keep the claim and the rescuer flat however many finished
-- tasks pile up.
CREATE INDEX tasks_ready ON tasks (priority, run_at, id) WHERE state = 'READY';
CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE state = 'INPROGRESS';
CREATE INDEX tasks_running_tenant ON tasks (tenant_id) WHERE state = 'INPROGRESS';
CREATE INDEX tasks_tenant ON tasks (tenant_id, id DESC);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE leader (
    name       TEXT PRIMARY KEY,
    node       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE uploads (
    id         TEXT   PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id),
    size       BIGINT NOT NULL,
    sha256     TEXT   NOT NULL,
    object_key TEXT   NOT NULL,
    filename   TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE task_rejects (
    task_id     BIGINT NOT NULL,
    row         BIGINT NOT NULL,
    code        TEXT   NOT NULL,
    column_name TEXT,
    message     TEXT   NOT NULL,
    raw         TEXT   NOT NULL,
    PRIMARY KEY (task_id, row)
);

-- Data indexes: columns mirror datask_core::index (a test checks they match).
CREATE TABLE idx_users (
    tenant_id      BIGINT NOT NULL,
    user_id        TEXT   NOT NULL,
    email          TEXT,
    mobile_number  TEXT,
    first_name     TEXT,
    last_name      TEXT,
    country        TEXT,
    language       TEXT,
    timezone       TEXT,
    email_opt_in   BOOLEAN,
    sms_opt_in     BOOLEAN,
    push_opt_in    BOOLEAN,
    created_at     TIMESTAMPTZ,
    last_active_at TIMESTAMPTZ,
    attributes     JSONB,
    _import_run    BIGINT,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE idx_transactions (
    tenant_id      BIGINT NOT NULL,
    transaction_id TEXT   NOT NULL,
    user_id        TEXT,
    store_id       TEXT,
    amount         DOUBLE PRECISION,
    currency       TEXT,
    status         TEXT,
    created_at     TIMESTAMPTZ,
    _import_run    BIGINT,
    PRIMARY KEY (tenant_id, transaction_id)
);

CREATE TABLE idx_vouchers (
    tenant_id   BIGINT NOT NULL,
    voucher_id  TEXT   NOT NULL,
    user_id     TEXT,
    code        TEXT,
    value       DOUBLE PRECISION,
    currency    TEXT,
    status      TEXT,
    issued_at   TIMESTAMPTZ,
    expires_at  TIMESTAMPTZ,
    redeemed_at TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, voucher_id)
);

CREATE TABLE idx_wallet_ledger (
    tenant_id   BIGINT NOT NULL,
    entry_id    TEXT   NOT NULL,
    user_id     TEXT,
    wallet_id   TEXT,
    amount      DOUBLE PRECISION,
    balance     DOUBLE PRECISION,
    reason      TEXT,
    created_at  TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, entry_id)
);

CREATE TABLE idx_products (
    tenant_id   BIGINT NOT NULL,
    product_id  TEXT   NOT NULL,
    name        TEXT,
    category    TEXT,
    price       DOUBLE PRECISION,
    currency    TEXT,
    active      BOOLEAN,
    created_at  TIMESTAMPTZ,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, product_id)
);

CREATE TABLE idx_product_variants (
    tenant_id   BIGINT NOT NULL,
    variant_id  TEXT   NOT NULL,
    product_id  TEXT,
    sku         TEXT,
    name        TEXT,
    price       DOUBLE PRECISION,
    stock       BIGINT,
    active      BOOLEAN,
    _import_run BIGINT,
    PRIMARY KEY (tenant_id, variant_id)
);
