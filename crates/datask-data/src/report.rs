//! Row reports in the first seed's wording:
//! `"Rows must contain identifier (Row 4)"` for one row,
//! `"7 Rows must contain identifier ( Row 6, Row 11, Row 13, Row 18, ...)"` for many.

/// The message base for a reject code (and its column, when it has one).
pub fn row_message(code: &str, column: Option<&str>) -> String {
    let col = column.unwrap_or("?");
    match code {
        "missing_identifier" => "Rows must contain identifier".into(),
        "duplicate" => "Rows are duplicates".into(),
        "invalid_value" => format!("Rows have an invalid value in column '{col}'"),
        "ragged_row" => "Rows have the wrong number of fields".into(),
        "invalid_utf8" => format!("Rows are not valid UTF-8 in column '{col}'"),
        "invalid_json" => "Rows are not JSON objects".into(),
        "unknown_field" => format!("Rows have a field that is not in the first row ('{col}')"),
        other => match column {
            Some(c) => format!("Rows were rejected ({other}, column '{c}')"),
            None => format!("Rows were rejected ({other})"),
        },
    }
}

/// Renders one group: the count, the message, and at most four rows.
pub fn format_group(base: &str, count: i64, first_rows: &[i64]) -> String {
    if count == 1 {
        return format!("{base} (Row {})", first_rows.first().copied().unwrap_or(0));
    }
    let shown: Vec<String> = first_rows
        .iter()
        .take(4)
        .map(|r| format!("Row {r}"))
        .collect();
    let more = if count > shown.len() as i64 {
        ", ..."
    } else {
        ""
    };
    format!("{count} {base} ( {}{more})", shown.join(", "))
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
        assert_eq!(
            format_group(&row_message("duplicate", None), 2, &[3, 5]),
            "2 Rows are duplicates ( Row 3, Row 5)"
        );
        assert_eq!(
            format_group(
                &row_message("invalid_value", Some("price")),
                4,
                &[2, 3, 4, 5]
            ),
            "4 Rows have an invalid value in column 'price' ( Row 2, Row 3, Row 4, Row 5)"
        );
    }
}
