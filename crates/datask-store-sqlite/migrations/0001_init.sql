-- Times are INTEGER microseconds since the Unix epoch (UTC): compact,
-- sortable, and exact in both directions.

CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    timezone    TEXT    NOT NULL,
    concurrency INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Only the SHA-256 of a secret is kept.
CREATE TABLE credentials (
    secret_sha256 TEXT    PRIMARY KEY,
    tenant_id     INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT, -- ids are never reused
    tenant_id        INTEGER NOT NULL REFERENCES tenants (id),
    identifier       TEXT    NOT NULL,
    desc             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    trigger          TEXT    NOT NULL,
    target           TEXT    NOT NULL,
    logs             TEXT    NOT NULL DEFAULT '[]',
    errors           TEXT    NOT NULL DEFAULT '{}',
    progress_done    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER,
    output           TEXT,
    result           TEXT,
    version          INTEGER NOT NULL DEFAULT 1,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    debug            TEXT    NOT NULL DEFAULT '',
    priority         INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    modified_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    run_at           INTEGER NOT NULL,
    schedule_anchor  INTEGER,
    checkpoint       TEXT,
    fence            INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    idempotency_key  TEXT
);

-- Partial indexes keep the claim and the rescuer flat however many finished
-- tasks pile up.
CREATE INDEX tasks_ready ON tasks (priority, run_at, id) WHERE state = 'READY';
CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE state = 'INPROGRESS';
CREATE INDEX tasks_running_tenant ON tasks (tenant_id) WHERE state = 'INPROGRESS';
CREATE INDEX tasks_tenant ON tasks (tenant_id, id);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Fences come from one service-wide sequence.
CREATE TABLE fence_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO fence_seq (id, value) VALUES (1, 0);

CREATE TABLE leader (
    name       TEXT PRIMARY KEY,
    node       TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE uploads (
    id         TEXT    PRIMARY KEY,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id),
    size       INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    object_key TEXT    NOT NULL,
    filename   TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE task_rejects (
    task_id     INTEGER NOT NULL,
    row         INTEGER NOT NULL,
    code        TEXT    NOT NULL,
    column_name TEXT,
    message     TEXT    NOT NULL,
    raw         TEXT    NOT NULL,
    PRIMARY KEY (task_id, row)
) WITHOUT ROWID;

-- Data indexes: columns mirror datask_core::index (a test checks they match).
CREATE TABLE idx_users (
    tenant_id      INTEGER NOT NULL,
    user_id        TEXT    NOT NULL,
    email          TEXT,
    mobile_number  TEXT,
    first_name     TEXT,
    last_name      TEXT,
    country        TEXT,
    language       TEXT,
    timezone       TEXT,
    email_opt_in   INTEGER,
    sms_opt_in     INTEGER,
    push_opt_in    INTEGER,
    created_at     INTEGER,
    last_active_at INTEGER,
    attributes     TEXT,
    _import_run    INTEGER,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE idx_transactions (
    tenant_id      INTEGER NOT NULL,
    transaction_id TEXT    NOT NULL,
    user_id        TEXT,
    store_id       TEXT,
    amount         REAL,
    currency       TEXT,
    status         TEXT,
    created_at     INTEGER,
    _import_run    INTEGER,
    PRIMARY KEY (tenant_id, transaction_id)
);

CREATE TABLE idx_vouchers (
    tenant_id   INTEGER NOT NULL,
    voucher_id  TEXT    NOT NULL,
    user_id     TEXT,
    code        TEXT,
    value       REAL,
    currency    TEXT,
    status      TEXT,
    issued_at   INTEGER,
    expires_at  INTEGER,
    redeemed_at INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, voucher_id)
);

CREATE TABLE idx_wallet_ledger (
    tenant_id   INTEGER NOT NULL,
    entry_id    TEXT    NOT NULL,
    user_id     TEXT,
    wallet_id   TEXT,
    amount      REAL,
    balance     REAL,
    reason      TEXT,
    created_at  INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, entry_id)
);

CREATE TABLE idx_products (
    tenant_id   INTEGER NOT NULL,
    product_id  TEXT    NOT NULL,
    name        TEXT,
    category    TEXT,
    price       REAL,
    currency    TEXT,
    active      INTEGER,
    created_at  INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, product_id)
);

CREATE TABLE idx_product_variants (
    tenant_id   INTEGER NOT NULL,
    variant_id  TEXT    NOT NULL,
    product_id  TEXT,
    sku         TEXT,
    name        TEXT,
    price       REAL,
    stock       INTEGER,
    active      INTEGER,
    _import_run INTEGER,
    PRIMARY KEY (tenant_id, variant_id)
);
