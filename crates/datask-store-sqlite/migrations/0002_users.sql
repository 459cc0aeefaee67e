-- Admin users: a person with an access level per tenant. Only the SHA-256
-- of a user's token is kept.
CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    token_sha256 TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL
);

CREATE TABLE memberships (
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    level     TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
) WITHOUT ROWID;
