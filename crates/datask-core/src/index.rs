//! The tenant's data indexes: a fixed, compiled-in schema per index.
//!
//! Table and column names used in SQL come only from here, never from a
//! client, so a store may build statements from them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Integer,
    Number,
    Boolean,
    /// An instant, written as RFC 3339 in UTC.
    Time,
    /// A JSON object (custom attributes).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// Required on import (the natural key always is).
    pub required: bool,
    /// A JSON object that an import merges into the stored one instead of
    /// replacing it (custom attributes).
    pub merge: bool,
    /// Written once: an import sets it on a row that has none and never
    /// changes it afterwards (a profile's `created_at`).
    pub kept: bool,
}

impl Column {
    /// An optional column of a plain type.
    pub const fn new(name: &'static str, ty: ColumnType) -> Column {
        Column {
            name,
            ty,
            required: false,
            merge: false,
            kept: false,
        }
    }
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column::new(name, ty)
}

const fn key(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Text,
        required: true,
        merge: false,
        kept: false,
    }
}

const fn merged(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Json,
        required: false,
        merge: true,
        kept: false,
    }
}

const fn kept(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        required: false,
        merge: false,
        kept: true,
    }
}

/// One index: its public name, its table, its columns; the first
/// `key_len` columns are the natural key that imports upsert by.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexDef {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [Column],
    pub key_len: usize,
}

impl IndexDef {
    /// The key's columns (one, or two for list members).
    pub fn key(&self) -> &'static [Column] {
        &self.columns[..self.key_len]
    }

    /// Whether column `i` is part of the key.
    pub fn is_key(&self, i: usize) -> bool {
        i < self.key_len
    }

    /// The key's column names joined by `, ` (for `ON CONFLICT` / `ORDER BY`).
    pub fn key_sql(&self) -> String {
        self.key()
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }
}

use ColumnType::*;

pub static USERS: IndexDef = IndexDef {
    name: "users",
    table: "idx_users",
    key_len: 1,
    columns: &[
        key("user_id"),
        col("email", Text),
        col("mobile_number", Text),
        col("first_name", Text),
        col("last_name", Text),
        col("country", Text),
        col("language", Text),
        col("timezone", Text),
        col("email_opt_in", Boolean),
        col("sms_opt_in", Boolean),
        col("push_opt_in", Boolean),
        kept("created_at", Time),
        col("last_active_at", Time),
        merged("attributes"),
    ],
};

pub static TRANSACTIONS: IndexDef = IndexDef {
    name: "transactions",
    table: "idx_transactions",
    key_len: 1,
    columns: &[
        key("transaction_id"),
        col("user_id", Text),
        col("store_id", Text),
        col("amount", Number),
        col("currency", Text),
        col("status", Text),
        col("created_at", Time),
    ],
};

pub static VOUCHERS: IndexDef = IndexDef {
    name: "vouchers",
    table: "idx_vouchers",
    key_len: 1,
    columns: &[
        key("voucher_id"),
        col("user_id", Text),
        col("code", Text),
        col("value", Number),
        col("currency", Text),
        col("status", Text),
        col("issued_at", Time),
        col("expires_at", Time),
        col("redeemed_at", Time),
    ],
};

pub static WALLET_LEDGER: IndexDef = IndexDef {
    name: "wallet-ledger",
    table: "idx_wallet_ledger",
    key_len: 1,
    columns: &[
        key("entry_id"),
        col("user_id", Text),
        col("wallet_id", Text),
        col("amount", Number),
        col("balance", Number),
        col("reason", Text),
        col("created_at", Time),
    ],
};

pub static PRODUCTS: IndexDef = IndexDef {
    name: "products",
    table: "idx_products",
    key_len: 1,
    columns: &[
        key("product_id"),
        col("name", Text),
        col("category", Text),
        col("price", Number),
        col("currency", Text),
        col("active", Boolean),
        col("created_at", Time),
    ],
};

pub static PRODUCT_VARIANTS: IndexDef = IndexDef {
    name: "product-variants",
    table: "idx_product_variants",
    key_len: 1,
    columns: &[
        key("variant_id"),
        col("product_id", Text),
        col("sku", Text),
        col("name", Text),
        col("price", Number),
        col("stock", Integer),
        col("active", Boolean),
    ],
};

/// A profile's devices; push goes to the enabled ones.
pub static DEVICES: IndexDef = IndexDef {
    name: "devices",
    table: "idx_devices",
    key_len: 1,
    columns: &[
        key("device_id"),
        col("user_id", Text),
        col("platform", Text),
        col("token", Text),
        col("push_enabled", Boolean),
        col("last_seen_at", Time),
        col("created_at", Time),
    ],
};

pub static LISTS: IndexDef = IndexDef {
    name: "lists",
    table: "idx_lists",
    key_len: 1,
    columns: &[key("list_id"), col("name", Text), col("created_at", Time)],
};

/// Who is on which list: keyed by the pair.
pub static LIST_MEMBERS: IndexDef = IndexDef {
    name: "list-members",
    table: "idx_list_members",
    key_len: 2,
    columns: &[key("list_id"), key("user_id"), col("added_at", Time)],
};

/// A campaign targets `segment` (a filter) or the saved `segment_id` on
/// one channel: email, push or sms.
pub static CAMPAIGNS: IndexDef = IndexDef {
    name: "campaigns",
    table: "idx_campaigns",
    key_len: 1,
    columns: &[
        key("campaign_id"),
        col("name", Text),
        col("channel", Text),
        col("segment_id", Integer),
        col("segment", Json),
        col("status", Text),
        col("created_at", Time),
        col("sent_at", Time),
    ],
};

/// One message to one recipient, with its delivery times.
pub static SENDS: IndexDef = IndexDef {
    name: "sends",
    table: "idx_sends",
    key_len: 1,
    columns: &[
        key("send_id"),
        col("campaign_id", Text),
        col("user_id", Text),
        col("device_id", Text),
        col("channel", Text),
        col("status", Text),
        col("sent_at", Time),
        col("delivered_at", Time),
        col("opened_at", Time),
        col("clicked_at", Time),
    ],
};

/// Attributed installs pulled by `kochava_sync_installs`: one per device,
/// with the network and campaign the install is credited to.
pub static INSTALLS: IndexDef = IndexDef {
    name: "installs",
    table: "idx_installs",
    key_len: 1,
    columns: &[
        key("device_id"),
        col("user_id", Text),
        col("platform", Text),
        col("network", Text),
        col("campaign", Text),
        col("installed_at", Time),
    ],
};

pub static ALL: [&IndexDef; 12] = [
    &USERS,
    &TRANSACTIONS,
    &VOUCHERS,
    &WALLET_LEDGER,
    &PRODUCTS,
    &PRODUCT_VARIANTS,
    &DEVICES,
    &LISTS,
    &LIST_MEMBERS,
    &CAMPAIGNS,
    &SENDS,
    &INSTALLS,
];

/// Views for audience exports: a projection of an index's table, read the
/// same way; not importable and not in [`ALL`].
pub static PROFILE_IDS: IndexDef = IndexDef {
    name: "profile-ids",
    table: "idx_users",
    key_len: 1,
    columns: &[key("user_id")],
};

pub static DEVICE_IDS: IndexDef = IndexDef {
    name: "device-ids",
    table: "idx_devices",
    key_len: 1,
    columns: &[
        key("device_id"),
        col("user_id", Text),
        col("platform", Text),
    ],
};

pub fn by_name(name: &str) -> Option<&'static IndexDef> {
    ALL.iter().copied().find(|i| i.name == name)
}

pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|i| i.name).collect()
}

/// A typed cell value, already validated against its column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Integer(i64),
    Number(f64),
    Boolean(bool),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
    Json(String),
}
