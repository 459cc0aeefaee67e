//! Instants as `TIMESTAMPTZ`, converted at the edge.
//!
//! sqlx has no jiff support, and the store-neutral values are microseconds
//! since the Unix epoch anyway (`Value::Time`, `Timestamp::as_microsecond`).
//! PostgreSQL's binary `TIMESTAMPTZ` is microseconds since 2000-01-01 UTC, so
//! one offset converts exactly both ways, with no SQL casts, no float and no
//! dependence on the session's time zone.

use jiff::Timestamp;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef, Postgres,
};
use sqlx::{Decode, Encode, Type};

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// An instant in microseconds since the Unix epoch (UTC), bound and read as
/// `TIMESTAMPTZ`. PostgreSQL's `±infinity` read as `i64::MAX`/`i64::MIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PgTime(pub i64);

impl PgTime {
    /// The jiff instant; out-of-range values (infinity, years past 9999)
    /// clamp to jiff's limits.
    pub(crate) fn ts(self) -> Timestamp {
        Timestamp::from_microsecond(self.0).unwrap_or(if self.0 < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
    }
}

impl PgTime {
    /// The instant PostgreSQL's binary format carries as `pg`.
    pub(crate) fn from_wire(pg: i64) -> PgTime {
        PgTime(match pg {
            i64::MAX | i64::MIN => pg,
            // Cannot overflow: PostgreSQL's range ends in year 294276.
            _ => pg + PG_EPOCH_US,
        })
    }

    /// The value PostgreSQL's binary format carries: microseconds since
    /// 2000-01-01, `±infinity` kept as they are.
    pub(crate) fn wire(self) -> Result<i64, String> {
        match self.0 {
            i64::MAX | i64::MIN => Ok(self.0),
            us => us
                .checked_sub(PG_EPOCH_US)
                .ok_or_else(|| format!("{us} µs is out of range for TIMESTAMPTZ")),
        }
    }
}

impl From<Timestamp> for PgTime {
    fn from(t: Timestamp) -> Self {
        PgTime(t.as_microsecond())
    }
}

/// The `TIMESTAMPTZ` of a jiff instant, for binding.
pub(crate) fn pg(t: Timestamp) -> PgTime {
    PgTime::from(t)
}

// Built-in type OIDs are fixed in every PostgreSQL (pg_type.dat); sqlx
// keeps its own TIMESTAMPTZ constants behind the chrono/time features.
const TIMESTAMPTZ: Oid = Oid(1184);
const TIMESTAMPTZ_ARRAY: Oid = Oid(1185);

impl Type<Postgres> for PgTime {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ)
    }
}

impl PgHasArrayType for PgTime {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ_ARRAY)
    }
}

impl Encode<'_, Postgres> for PgTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode(self.wire()?, buf)
    }

    fn size_hint(&self) -> usize {
        std::mem::size_of::<i64>()
    }
}

impl<'r> Decode<'r, Postgres> for PgTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let pg: i64 = Decode::<Postgres>::decode(value)?;
                Ok(PgTime::from_wire(pg))
            }
            // Only the simple query protocol answers in text; sqlx sets the
            // session to UTC and ISO dates ("2026-03-01 12:00:00.5+00").
            PgValueFormat::Text => parse_text(value.as_str()?),
        }
    }
}

fn parse_text(s: &str) -> Result<PgTime, BoxDynError> {
    match s {
        "infinity" => return Ok(PgTime(i64::MAX)),
        "-infinity" => return Ok(PgTime(i64::MIN)),
        _ => {}
    }
    let t: Timestamp = s.parse()?;
    Ok(PgTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_parses() {
        let t = parse_text("2026-03-01 12:00:00.123456+00").unwrap();
        let want: Timestamp = "2026-03-01T12:00:00.123456Z".parse().unwrap();
        assert_eq!(t, PgTime::from(want));
        assert_eq!(parse_text("infinity").unwrap().ts(), Timestamp::MAX);
        assert_eq!(parse_text("-infinity").unwrap().ts(), Timestamp::MIN);
    }
}
