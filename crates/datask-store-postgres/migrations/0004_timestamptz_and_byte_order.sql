-- Bookkeeping times become TIMESTAMPTZ, the type the data indexes already
-- use: readable in psql, compared natively, and no unit to get wrong. The
-- store binds and reads them as microseconds since the epoch (src/time.rs),
-- so nothing is lost. The conversion is exact: microsecond counts of real
-- dates are far below 2^53, where float8 holds every integer.

CREATE FUNCTION pg_temp.us_to_tz(us BIGINT) RETURNS TIMESTAMPTZ
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'epoch'::timestamptz + us * interval '1 microsecond' $$;

ALTER TABLE tenants
    ALTER COLUMN created_at TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(created_at);

ALTER TABLE users
    ALTER COLUMN created_at TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(created_at);

ALTER TABLE uploads
    ALTER COLUMN created_at TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(created_at);

ALTER TABLE leader
    ALTER COLUMN expires_at TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(expires_at);

-- The partial indexes on run_at and lease_expires_at are rebuilt with them.
ALTER TABLE tasks
    ALTER COLUMN created_at       TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(created_at),
    ALTER COLUMN modified_at      TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(modified_at),
    ALTER COLUMN started_at       TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(started_at),
    ALTER COLUMN finished_at      TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(finished_at),
    ALTER COLUMN run_at           TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(run_at),
    ALTER COLUMN schedule_anchor  TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(schedule_anchor),
    ALTER COLUMN lease_expires_at TYPE TIMESTAMPTZ USING pg_temp.us_to_tz(lease_expires_at);

-- `next_due` asks for the earliest READY run_at; the claim index leads with
-- priority, so without this one it reads every READY task (repeating tasks
-- wait READY for their next run, so there can be many).
DROP FUNCTION pg_temp.us_to_tz(BIGINT);

CREATE INDEX tasks_ready_due ON tasks (run_at) WHERE state = 'READY';

-- Text in the data indexes compares and sorts by bytes, as in SQLite, and
-- whatever locale the database was created with: segment comparisons give
-- the same answers on both stores, and exports (key order) walk the primary
-- key instead of sorting the tenant's rows first.
ALTER TABLE idx_users
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN email TYPE TEXT COLLATE "C",
    ALTER COLUMN mobile_number TYPE TEXT COLLATE "C",
    ALTER COLUMN first_name TYPE TEXT COLLATE "C",
    ALTER COLUMN last_name TYPE TEXT COLLATE "C",
    ALTER COLUMN country TYPE TEXT COLLATE "C",
    ALTER COLUMN language TYPE TEXT COLLATE "C",
    ALTER COLUMN timezone TYPE TEXT COLLATE "C";

ALTER TABLE idx_transactions
    ALTER COLUMN transaction_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN store_id TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C";

ALTER TABLE idx_vouchers
    ALTER COLUMN voucher_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN code TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C";

ALTER TABLE idx_wallet_ledger
    ALTER COLUMN entry_id TYPE TEXT COLLATE "C",
    ALTER COLUMN user_id TYPE TEXT COLLATE "C",
    ALTER COLUMN wallet_id TYPE TEXT COLLATE "C",
    ALTER COLUMN reason TYPE TEXT COLLATE "C";

ALTER TABLE idx_products
    ALTER COLUMN product_id TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C",
    ALTER COLUMN category TYPE TEXT COLLATE "C",
    ALTER COLUMN currency TYPE TEXT COLLATE "C";

ALTER TABLE idx_product_variants
    ALTER COLUMN variant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN product_id TYPE TEXT COLLATE "C",
    ALTER COLUMN sku TYPE TEXT COLLATE "C",
    ALTER COLUMN name TYPE TEXT COLLATE "C";
