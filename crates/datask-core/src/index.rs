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
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column {
        name,
        ty,
        required: false,
    }
}

const fn key(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Text,
        required: true,
    }
}

/// One index: its public name, its table, its columns; the first column is
/// the natural key that imports upsert by.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexDef {
    pub name: &'static str,
    pub table: &'static str,
    pub columns: &'static [Column],
}

impl IndexDef {
    pub fn key(&self) -> &Column {
        &self.columns[0]
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
        col("created_at", Time),
        col("last_active_at", Time),
        col("attributes", Json),
    ],
};

pub static TRANSACTIONS: IndexDef = IndexDef {
    name: "transactions",
    table: "idx_transactions",
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

pub static ALL: [&IndexDef; 6] = [
    &USERS,
    &TRANSACTIONS,
    &VOUCHERS,
    &WALLET_LEDGER,
    &PRODUCTS,
    &PRODUCT_VARIANTS,
];

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
