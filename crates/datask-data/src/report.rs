//! Row reports in the first seed's wording:
//! `"Rows must contain identifier (Row 4)"` for one row,
//! `"7 Rows must contain identifier ( Row 6, Row 11, Row 13, Row 18, ...)"`
//! for many (at most four rows shown, `...` when there are more).

/// How many rows a group names.
pub const SHOWN_ROWS: usize = 4;

/// The message base for a reject code (and its column, when it has one).
pub fn row_message(code: &str, column: Option<&str>) -> String {
    let in_column = |base: &str| match column {
        Some(c) => format!("{base} in column '{c}'"),
        None => base.to_string(),
    };
    match code {
        "missing_identifier" => "Rows must contain identifier".into(),
        "duplicate" => "Rows are duplicates".into(),
        "unknown_profile" => in_column("Rows do not match a profile"),
        "invalid_value" => in_column("Rows have an invalid value"),
        "missing_value" => in_column("Rows are missing a required value"),
        "ragged_row" => "Rows have the wrong number of fields".into(),
        "invalid_utf8" => in_column("Rows are not valid UTF-8"),
        "invalid_json" => "Rows are not JSON objects".into(),
        "unknown_attribute" => in_column("Rows have an attribute that is not a profile attribute"),
        "ambiguous_identifier" => in_column("Rows match more than one profile"),
        "identifier_taken" => {
            in_column("Rows would make a profile whose user_id another profile has")
        }
        "value_too_long" => in_column("Rows have a value that is too long"),
        "repeated_field" => in_column("Rows name a field more than once"),
        "unknown_field" => match column {
            Some(c) => format!("Rows have a field that is not in the first row ('{c}')"),
            None => "Rows have a field that is not in the first row".into(),
        },
        other => match column {
            Some(c) => format!("Rows were rejected ({other}, column '{c}')"),
            None => format!("Rows were rejected ({other})"),
        },
    }
}

/// Renders one group: the count, the message, and at most four rows.
pub fn format_group(base: &str, count: i64, first_rows: &[i64]) -> String {
    let shown = &first_rows[..first_rows.len().min(SHOWN_ROWS)];
    if count == 1 {
        return match shown.first() {
            Some(row) => format!("{base} (Row {row})"),
            None => base.to_string(),
        };
    }
    if shown.is_empty() {
        return format!("{count} {base}");
    }
    let mut out = format!("{count} {base} (");
    for (i, row) in shown.iter().enumerate() {
        out.push_str(if i == 0 { " Row " } else { ", Row " });
        out.push_str(&row.to_string());
    }
    if count > shown.len() as i64 {
        out.push_str(", ...");
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_wording() {
        assert_eq!(
            format_group(&row_message("missing_identifier", None), 1, &[4]),
            "Rows must contain identifier (Row 4)"
        );
        assert_eq!(
            format_group(
                &row_message("missing_identifier", None),
                7,
                &[6, 11, 13, 18]
            ),
            "7 Rows must contain identifier ( Row 6, Row 11, Row 13, Row 18, ...)"
        );
        assert_eq!(
            format_group(&row_message("duplicate", None), 9, &[12, 14, 15, 19]),
            "9 Rows are duplicates ( Row 12, Row 14, Row 15, Row 19, ...)"
        );
    }

    #[test]
    fn counts_and_row_lists() {
        let dup = row_message("duplicate", None);
        assert_eq!(
            format_group(&dup, 2, &[3, 5]),
            "2 Rows are duplicates ( Row 3, Row 5)"
        );
        assert_eq!(
            format_group(&dup, 4, &[2, 3, 4, 5]),
            "4 Rows are duplicates ( Row 2, Row 3, Row 4, Row 5)"
        );
        assert_eq!(
            format_group(&dup, 5, &[2, 3, 4, 5, 6]),
            "5 Rows are duplicates ( Row 2, Row 3, Row 4, Row 5, ...)",
            "a fifth row given is not shown"
        );
        assert_eq!(
            format_group(&dup, 3, &[7]),
            "3 Rows are duplicates ( Row 7, ...)"
        );
        assert_eq!(format_group(&dup, 3, &[]), "3 Rows are duplicates");
        assert_eq!(format_group(&dup, 1, &[]), "Rows are duplicates");
    }

    #[test]
    fn message_bases() {
        let cases = [
            ("missing_identifier", None, "Rows must contain identifier"),
            ("duplicate", None, "Rows are duplicates"),
            (
                "invalid_value",
                Some("amount"),
                "Rows have an invalid value in column 'amount'",
            ),
            ("invalid_value", None, "Rows have an invalid value"),
            ("ragged_row", None, "Rows have the wrong number of fields"),
            (
                "invalid_utf8",
                Some("name"),
                "Rows are not valid UTF-8 in column 'name'",
            ),
            ("invalid_utf8", None, "Rows are not valid UTF-8"),
            ("invalid_json", None, "Rows are not JSON objects"),
            (
                "unknown_field",
                Some("colour"),
                "Rows have a field that is not in the first row ('colour')",
            ),
            (
                "missing_value",
                Some("name"),
                "Rows are missing a required value in column 'name'",
            ),
            (
                "unknown_attribute",
                Some("attributes"),
                "Rows have an attribute that is not a profile attribute in column 'attributes'",
            ),
            ("odd", Some("x"), "Rows were rejected (odd, column 'x')"),
            ("odd", None, "Rows were rejected (odd)"),
        ];
        for (code, column, base) in cases {
            assert_eq!(row_message(code, column), base);
        }
        assert_eq!(
            format_group(&row_message("invalid_value", Some("price")), 1, &[9]),
            "Rows have an invalid value in column 'price' (Row 9)"
        );
    }
}
