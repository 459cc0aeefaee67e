-- Profile settings (attribute schema, identifier column, retention) as JSON;
-- NULL means the defaults.
ALTER TABLE tenants ADD COLUMN settings JSONB;
