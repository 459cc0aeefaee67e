//! Deterministic synthetic data for any index: the demo, tests and the
//! benchmarks all use it, so a figure can be reproduced from (index, rows, seed).

use std::io::{self, Write};

use datask_core::index::{ColumnType, IndexDef};

/// A small, fast, seeded generator (SplitMix64): same seed, same file.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const FIRST: &[&str] = &[
    "Ada", "Bram", "Chen", "Dara", "Eve", "Femi", "Gus", "Hana", "Ivo", "Juno",
];
const LAST: &[&str] = &[
    "Jansen", "Smith", "Okafor", "Garcia", "Kowalski", "Tanaka", "Novak", "Dubois",
];
const COUNTRIES: &[&str] = &["NL", "US", "DE", "FR", "GB", "JP", "BR", "NG"];
const LANGUAGES: &[&str] = &["nl", "en", "de", "fr", "ja", "pt"];
const ZONES: &[&str] = &["Europe/Amsterdam", "America/New_York", "Asia/Tokyo", "UTC"];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY"];
const STATUSES: &[&str] = &["completed", "pending", "refunded", "active", "expired"];
const CATEGORIES: &[&str] = &["shoes", "shirts", "bags", "hats", "gifts"];

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len() as u64) as usize]
}

/// Key prefix per index, so keys are readable (`u00000042`, `t00000042`, …).
fn prefix(index: &IndexDef) -> &'static str {
    match index.name {
        "users" => "u",
        "transactions" => "t",
        "vouchers" => "v",
        "wallet-ledger" => "w",
        "products" => "p",
        "devices" => "d",
        "lists" | "list-members" => "l",
        "campaigns" => "c",
        "sends" => "s",
        _ => "pv",
    }
}

/// Writes `rows` rows of `index` as CSV with a header. Foreign keys point
/// into the other indexes of the same size family (users, products).
pub fn write_csv(index: &IndexDef, rows: u64, seed: u64, out: impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let names: Vec<&str> = index.columns.iter().map(|c| c.name).collect();
    writeln!(out, "{}", names.join(","))?;
    let mut rng = Rng::new(seed);
    let base = 1_735_689_600u64; // 2025-01-01T00:00:00Z
    for n in 0..rows {
        for (i, col) in index.columns.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            if i == 0 && index.name == "list-members" {
                // Five lists; each row a distinct member.
                write!(out, "l{:08}", n % 5)?;
                continue;
            }
            if i == 0 {
                write!(out, "{}{:08}", prefix(index), n)?;
                continue;
            }
            match (index.name, col.name, col.ty) {
                ("list-members", "user_id", _) => {
                    write!(out, "u{n:08}")?;
                    continue;
                }
                ("campaigns", "segment_id", _) => continue,
                ("campaigns", "segment", _) => {
                    write!(
                        out,
                        "\"{{\"\"field\"\":\"\"country\"\",\"\"op\"\":\"\"eq\"\",\"\"value\"\":\"\"{}\"\"}}\"",
                        pick(&mut rng, COUNTRIES)
                    )?;
                    continue;
                }
                // Fewer opens than deliveries, fewer clicks than opens.
                ("sends", "delivered_at" | "opened_at" | "clicked_at", _)
                    if rng.below(10)
                        < match col.name {
                            "delivered_at" => 1,
                            "opened_at" => 5,
                            _ => 8,
                        } =>
                {
                    continue;
                }
                ("sends", "campaign_id", _) => {
                    write!(out, "c{:08}", rng.below(20))?;
                    continue;
                }
                _ => {}
            }
            match (col.name, col.ty) {
                ("channel", _) => {
                    out.write_all(pick(&mut rng, &["email", "push", "sms"]).as_bytes())?
                }
                ("platform", _) => {
                    out.write_all(pick(&mut rng, &["ios", "android", "web"]).as_bytes())?
                }
                ("user_id", _) => write!(out, "u{:08}", rng.below(rows.max(1)))?,
                ("product_id", _) => write!(out, "p{:08}", rng.below((rows / 3).max(1)))?,
                ("email", _) => write!(out, "user{n}@example.com")?,
                ("mobile_number", _) => write!(out, "+3161{:07}", rng.below(10_000_000))?,
                ("first_name", _) => out.write_all(pick(&mut rng, FIRST).as_bytes())?,
                ("last_name", _) => out.write_all(pick(&mut rng, LAST).as_bytes())?,
                ("country", _) => out.write_all(pick(&mut rng, COUNTRIES).as_bytes())?,
                ("language", _) => out.write_all(pick(&mut rng, LANGUAGES).as_bytes())?,
                ("timezone", _) => out.write_all(pick(&mut rng, ZONES).as_bytes())?,
                ("currency", _) => out.write_all(pick(&mut rng, CURRENCIES).as_bytes())?,
                ("status", _) => out.write_all(pick(&mut rng, STATUSES).as_bytes())?,
                ("category", _) => out.write_all(pick(&mut rng, CATEGORIES).as_bytes())?,
                (_, ColumnType::Text) => write!(out, "{}-{}", col.name, rng.below(1000))?,
                (_, ColumnType::Integer) => write!(out, "{}", rng.below(500))?,
                (_, ColumnType::Number) => write!(out, "{}.{:02}", rng.below(500), rng.below(100))?,
                (_, ColumnType::Boolean) => {
                    out.write_all(if rng.below(2) == 0 { b"true" } else { b"false" })?
                }
                (_, ColumnType::Time) => {
                    let t = jiff::Timestamp::from_second((base + rng.below(365 * 86_400)) as i64)
                        .expect("in range");
                    write!(out, "{t}")?
                }
                (_, ColumnType::Json) => write!(
                    out,
                    "\"{{\"\"tier\"\":\"\"{}\"\",\"\"points\"\":{}}}\"",
                    pick(&mut rng, &["gold", "silver", "bronze"]),
                    rng.below(10_000)
                )?,
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Profiles as `profile_import` reads them: the standard fields of `users`
/// (not the `attributes` object) and the custom attributes `tier` (string)
/// and `points` (number) as columns of their own.
pub fn write_profiles_csv(rows: u64, seed: u64, out: impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let mut rng = Rng::new(seed);
    let base = 1_735_689_600u64; // 2025-01-01T00:00:00Z
    writeln!(
        out,
        "user_id,email,mobile_number,first_name,last_name,country,language,timezone,\
         email_opt_in,sms_opt_in,push_opt_in,created_at,last_active_at,tier,points"
    )?;
    let yes_no = |rng: &mut Rng| if rng.below(2) == 0 { "true" } else { "false" };
    for n in 0..rows {
        let created = jiff::Timestamp::from_second((base + rng.below(365 * 86_400)) as i64)
            .expect("in range");
        let active = jiff::Timestamp::from_second((base + rng.below(365 * 86_400)) as i64)
            .expect("in range");
        writeln!(
            out,
            "u{n:08},user{n}@example.com,+3161{:07},{},{},{},{},{},{},{},{},{created},{active},{},{}",
            rng.below(10_000_000),
            pick(&mut rng, FIRST),
            pick(&mut rng, LAST),
            pick(&mut rng, COUNTRIES),
            pick(&mut rng, LANGUAGES),
            pick(&mut rng, ZONES),
            yes_no(&mut rng),
            yes_no(&mut rng),
            yes_no(&mut rng),
            pick(&mut rng, &["gold", "silver", "bronze"]),
            rng.below(10_000),
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_file() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_csv(&datask_core::index::USERS, 100, 7, &mut a).unwrap();
        write_csv(&datask_core::index::USERS, 100, 7, &mut b).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count(), 101);
        assert!(text.starts_with("user_id,email,"));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("u00000000,user0@example.com,")
        );
    }
}
